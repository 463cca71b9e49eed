# Who may call which route, model and version of the inference API.
#
# Evaluated in-process by regorus (Rego v1) for every request after authentication, on
#   input = {identity: {kind, id, tenant, subject, scopes}, tenant, app, method, route,
#            model: {name, version}}
# where `app` is the calling application (the certificate's app, or the token's subject),
# `route` is the route pattern (never the raw path), `model` is null on server-wide routes and
# `model.version` is the version that will serve the request.
#
# Grants come from data (the agent's `gateway.authz.data` file):
#   data.tenants[<tenant>].models[<model>] = {"versions": ["1", ...] or ["*"],
#                                             "routes": ["infer", "metadata", "ready"]}
#
# The agent reads `decision`. It allows only when at least one grant rule matched and no deny
# rule did; the audit records the deciding rule. Anything else (no match, an evaluation error,
# the execution limit) denies.
package warden.serving.routes

# Server-wide routes: health and server metadata, for any authenticated identity.
server_routes := {"/v2", "/v2/health/live", "/v2/health/ready"}

# Model routes and the verb a grant names them by.
model_routes := {
	"/v2/models/{name}": "metadata",
	"/v2/models/{name}/versions/{version}": "metadata",
	"/v2/models/{name}/ready": "ready",
	"/v2/models/{name}/versions/{version}/ready": "ready",
	"/v2/models/{name}/infer": "infer",
	"/v2/models/{name}/versions/{version}/infer": "infer",
}

authenticated if {
	is_string(input.identity.tenant)
	input.identity.tenant != ""
	input.tenant == input.identity.tenant
}

grant contains "server_routes" if {
	authenticated
	input.route in server_routes
	input.method in {"GET", "HEAD"}
}

# (Rule and data documents are first bound to local names and then indexed: a dynamic index
# straight into `data.…` or a rule makes regorus try, and fail, to resolve a static path on
# every evaluation, which costs more than the rest of the policy.)
grant contains "tenant_model_grant" if {
	authenticated
	verbs := model_routes
	tenants := data.tenants
	g := tenants[input.tenant].models[input.model.name]
	verbs[input.route] in g.routes
	version_granted(g.versions)
}

version_granted(versions) if "*" in versions

version_granted(versions) if input.model.version in versions

# A bearer token must carry the scope of the verb it is used for (`warden:infer`, …);
# certificate identities carry no scopes and are bound by their grants alone.
deny contains "missing_scope" if {
	input.identity.kind == "jwt"
	verbs := model_routes
	verb := verbs[input.route]
	not concat(":", ["warden", verb]) in input.identity.scopes
}

# A request whose tenant differs from its identity's is never allowed, whatever else matched.
deny contains "cross_tenant" if {
	input.tenant != input.identity.tenant
}

default allow := false

allow if {
	count(grant) > 0
	count(deny) == 0
}

decision := {"allow": allow, "grants": grant, "denies": deny}
