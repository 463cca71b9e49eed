//! The fixed route table of the Open Inference Protocol v2 (KServe v2 / Triton REST): a path
//! names a route before anything else is read, and the audit trail records the route's
//! pattern, never the raw path.

use http::Method;

/// What a route names.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    ServerMetadata,
    Live,
    Ready,
    ModelMetadata(&'a str, Option<&'a str>),
    ModelReady(&'a str, Option<&'a str>),
    Infer(&'a str, Option<&'a str>),
}

impl Route<'_> {
    /// The pattern recorded in the audit trail.
    pub fn pattern(&self) -> &'static str {
        match self {
            Route::ServerMetadata => "/v2",
            Route::Live => "/v2/health/live",
            Route::Ready => "/v2/health/ready",
            Route::ModelMetadata(_, None) => "/v2/models/{name}",
            Route::ModelMetadata(_, Some(_)) => "/v2/models/{name}/versions/{version}",
            Route::ModelReady(_, None) => "/v2/models/{name}/ready",
            Route::ModelReady(_, Some(_)) => "/v2/models/{name}/versions/{version}/ready",
            Route::Infer(_, None) => "/v2/models/{name}/infer",
            Route::Infer(_, Some(_)) => "/v2/models/{name}/versions/{version}/infer",
        }
    }

    pub fn method(&self) -> Method {
        match self {
            Route::Infer(..) => Method::POST,
            _ => Method::GET,
        }
    }

    pub fn model(&self) -> Option<(&str, Option<&str>)> {
        match *self {
            Route::ModelMetadata(n, v) | Route::ModelReady(n, v) | Route::Infer(n, v) => {
                Some((n, v))
            }
            _ => None,
        }
    }
}

pub fn route(path: &str) -> Option<Route<'_>> {
    let path = path.strip_suffix('/').unwrap_or(path);
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    Some(match segments.as_slice() {
        ["v2"] => Route::ServerMetadata,
        ["v2", "health", "live"] => Route::Live,
        ["v2", "health", "ready"] => Route::Ready,
        ["v2", "models", name] => Route::ModelMetadata(name, None),
        ["v2", "models", name, "ready"] => Route::ModelReady(name, None),
        ["v2", "models", name, "infer"] => Route::Infer(name, None),
        ["v2", "models", name, "versions", v] => Route::ModelMetadata(name, Some(v)),
        ["v2", "models", name, "versions", v, "ready"] => Route::ModelReady(name, Some(v)),
        ["v2", "models", name, "versions", v, "infer"] => Route::Infer(name, Some(v)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/v2"), Some(Route::ServerMetadata));
        assert_eq!(route("/v2/"), Some(Route::ServerMetadata));
        assert_eq!(route("/v2/health/live"), Some(Route::Live));
        assert_eq!(
            route("/v2/models/demo/versions/1/infer"),
            Some(Route::Infer("demo", Some("1")))
        );
        assert_eq!(
            route("/v2/models/demo/infer"),
            Some(Route::Infer("demo", None))
        );
        assert_eq!(
            route("/v2/models/demo/ready"),
            Some(Route::ModelReady("demo", None))
        );
        assert_eq!(route("/v2/models"), None);
        assert_eq!(route("/v1/models/demo"), None);
        assert_eq!(route("/v2/models/demo/versions/1/infer/x"), None);
    }
}
