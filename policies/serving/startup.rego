# Whether a verified model version may be served (on load and on every refresh).
#
# Evaluated in-process by regorus (Rego v1) on facts the agent established itself
# (agent/src/admission.rs); nothing here trusts a claim the bundle makes about itself:
#
#   input = {
#     model:      {name, version, root_digest},             # root_digest null when unsigned
#     signature:  {status, signer, detail},                  # status: valid | unsigned |
#                                                            #   tampered | unknown_signer | invalid
#     release:    {status, stage, policy_set_digest, signer, detail},
#                                                            # status: valid | missing | invalid
#     attestations: {status, required, present, detail},     # status: valid | missing | invalid
#     revocation: {status, serial, accepted_serial, revoked, reason},
#                                                            # status: current | none |
#                                                            #   replayed | invalid
#     running_policy_digest: "sha256:<hex>",
#   }
#
# Data (optional): data.startup.allowed_stages = ["Approved", ...]; default {"Approved"}.
#
# The agent reads `decision` = {allow, reasons}. `allow` holds only when every clause holds
# positively; each clause that does not hold adds one reason "<clause>: <detail>". An
# evaluation error or the execution limit denies (in the agent).
package warden.serving.startup

default allowed_stages := {"Approved"}

allowed_stages := {s | some s in data.startup.allowed_stages} if data.startup.allowed_stages

# --- the clauses ---------------------------------------------------------------------------

stage_allowed if {
	input.release.status == "valid"
	input.release.stage in allowed_stages
}

signature_valid if {
	input.signature.status == "valid"
	is_string(input.model.root_digest)
	startswith(input.model.root_digest, "sha256:")
}

release_valid if input.release.status == "valid"

attestations_valid if {
	input.attestations.status == "valid"
	every r in input.attestations.required {
		r in input.attestations.present
	}
}

policy_digest_matches if {
	input.release.status == "valid"
	is_string(input.running_policy_digest)
	input.release.policy_set_digest == input.running_policy_digest
}

# A list verified against the key store's counter and not revoking this model; or no list at
# all while no list was ever accepted (counter 0): removing the list cannot un-revoke.
not_revoked if {
	input.revocation.status == "current"
	input.revocation.revoked == false
}

not_revoked if {
	input.revocation.status == "none"
	input.revocation.accepted_serial == 0
}

default allow := false

allow if {
	signature_valid
	release_valid
	stage_allowed
	attestations_valid
	policy_digest_matches
	not_revoked
}

# --- why not -------------------------------------------------------------------------------

signature_codes := {
	"unsigned": "unsigned",
	"tampered": "tampered",
	"unknown_signer": "unknown_signer",
	"invalid": "signature_invalid",
}

clause_reasons contains sprintf("%s: %s", [signature_codes[input.signature.status], object.get(input.signature, "detail", "")]) if {
	not signature_valid
	signature_codes[input.signature.status]
}

clause_reasons contains "signature_invalid: no verified signature" if {
	not signature_valid
	not signature_codes[input.signature.status]
}

clause_reasons contains sprintf("release_%s: %s", [input.release.status, object.get(input.release, "detail", "")]) if {
	not release_valid
	input.release.status in {"missing", "invalid"}
}

clause_reasons contains "release_invalid: no verified release statement" if {
	not release_valid
	not input.release.status in {"missing", "invalid"}
}

clause_reasons contains sprintf("wrong_stage: release stage %v is not allowed here (allowed: %v)", [input.release.stage, concat(", ", sort([s | some s in allowed_stages]))]) if {
	release_valid
	not stage_allowed
}

clause_reasons contains sprintf("attestation_%s: %s", [input.attestations.status, object.get(input.attestations, "detail", "")]) if {
	not attestations_valid
	input.attestations.status in {"missing", "invalid"}
}

clause_reasons contains sprintf("attestation_missing: required %v, present %v", [input.attestations.required, input.attestations.present]) if {
	not attestations_valid
	input.attestations.status == "valid"
}

clause_reasons contains "attestation_invalid: attestations were not verified" if {
	not attestations_valid
	not input.attestations.status in {"valid", "missing", "invalid"}
}

clause_reasons contains sprintf("policy_digest_mismatch: release expects %v, running policy set is %v", [object.get(input.release, "policy_set_digest", null), object.get(input, "running_policy_digest", null)]) if {
	release_valid
	not policy_digest_matches
}

clause_reasons contains sprintf("revoked: %v", [object.get(input.revocation, "reason", "")]) if {
	input.revocation.status == "current"
	input.revocation.revoked != false
}

clause_reasons contains sprintf("revocation_list_replayed: list serial %v is older than the accepted serial %v", [input.revocation.serial, input.revocation.accepted_serial]) if {
	input.revocation.status == "replayed"
}

clause_reasons contains sprintf("revocation_list_invalid: %v", [object.get(input.revocation, "reason", "")]) if {
	input.revocation.status == "invalid"
}

clause_reasons contains sprintf("revocation_list_missing: a list with serial %v was accepted before; none is present now", [input.revocation.accepted_serial]) if {
	input.revocation.status == "none"
	input.revocation.accepted_serial != 0
}

clause_reasons contains "revocation_unknown: revocation status was not established" if {
	not input.revocation.status in {"current", "none", "replayed", "invalid"}
}

# Fail closed: a denial always names at least one reason, and an allowed load none.
default reasons := set()

reasons := clause_reasons if count(clause_reasons) > 0

reasons := {"denied: no clause permitted the load"} if {
	count(clause_reasons) == 0
	not allow
}

decision := {"allow": allow, "reasons": reasons}
