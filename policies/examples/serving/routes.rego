package serving.routes
default allow = false
allow {
  input.app in {"core-banking","risk-engine"}
  input.model.name == "churn_v2"
  input.model.version == "2.3.1"
  input.route == "/v2/predict"
}
