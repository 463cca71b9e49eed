//! `POST /admin/v1/models/{name}/rollback`: the previously active version becomes the default
//! again, kept across restarts.

use super::context::Context;
use super::refusal::Refusal;

/// The version now active (for the audit trail) and the outcome.
pub fn rollback(cx: &Context, name: &str) -> (Option<String>, Result<serde_json::Value, Refusal>) {
    match cx.models.rollback(name) {
        Ok(v) => {
            cx.save_defaults();
            (
                Some(v.clone()),
                Ok(serde_json::json!({"name": name, "active": v})),
            )
        }
        Err(e) => (None, Err(Refusal::NoPrevious(e.to_string()))),
    }
}
