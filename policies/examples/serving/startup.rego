package serving.startup
default permit = false
permit {
  input.stage == "Approved"  # (ou "Staging" sob regra)
  input.signatures.model_valid
  input.attestation.present
  input.revoke == false
  input.policy_digest == input.runtime.policy_digest
}
