package llm.output
default allow = true
deny_reason[msg] {
  some p in input.tokens
  p.class == "PII"
  msg := sprintf("PII token blocked: %v", [p.value])
}
