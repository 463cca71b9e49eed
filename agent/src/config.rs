//! The agent's configuration: typed TOML, unknown fields refused, every cross-field rule checked
//! at load so that `warden serve` either starts with a coherent config or names what is wrong.
//! The commented reference is `agent/warden.example.toml`.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use warden_keystore::config::BackendConfig;

/// The only schema this build reads.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: field `{field}`: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub schema_version: u32,
    pub server: ServerConfig,
    pub tls: TlsConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// File-based model-signer anchors: only without a `[keystore]` (development mode).
    #[serde(default)]
    pub trust: TrustConfig,
    /// Where keys and trust anchors live. Present: anchors come from the key store's roles and
    /// every load is decided by `[admission]`.
    pub keystore: Option<KeystoreConfig>,
    /// The startup policy, allowed stages and revocation list (required with `[keystore]`).
    pub admission: Option<AdmissionConfig>,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default, rename = "model")]
    pub models: Vec<ModelConfig>,
    /// Identities, authorization, limits and circuit breaking (`crate::gateway`).
    #[serde(default)]
    pub gateway: crate::gateway::config::GatewayConfig,
    /// The Prometheus metrics listener.
    #[serde(default)]
    pub metrics: crate::gateway::config::MetricsConfig,
    /// The sandbox every model worker runs in (secure defaults; `warden_runtime_client::sandbox_policy`).
    #[serde(default)]
    pub sandbox: warden_runtime_client::sandbox_policy::SandboxPolicy,
    /// The fleet-push admin listener (`crate::admin`); absent: disabled.
    pub admin: Option<AdminConfig>,
}

/// `[admin]`: the fleet-push listener, HTTPS with client certificates from the fleet CA only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address and port (keep it on loopback or a management network).
    pub listen: SocketAddr,
    /// PEM CA(s) that admin client certificates must chain to. With a key store whose
    /// fleet-authority anchors are certificates, those are used instead.
    pub client_ca: Option<PathBuf>,
    /// Largest pushed archive (bytes, as sent and as unpacked).
    #[serde(default = "default_admin_max_upload_bytes")]
    pub max_upload_bytes: u64,
    /// Most entries in a pushed archive.
    #[serde(default = "default_admin_max_entries")]
    pub max_entries: usize,
    /// Accept pushed versions of models this file does not name (default: refused). Such a
    /// model runs with the defaults — the CPU, no batching, no value ranges — on the one
    /// `.onnx` or `.safetensors` file at the top of the bundle's `model/`; every check a
    /// configured model passes (signature, admission, revocation) applies the same.
    #[serde(default)]
    pub accept_new_models: bool,
}

fn default_admin_max_upload_bytes() -> u64 {
    4 * 1024 * 1024 * 1024
}

fn default_admin_max_entries() -> usize {
    10_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the inference listener.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers) accepted, in bytes.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Time allowed for one request from its first byte to its response.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Time a client gets to complete the TLS handshake.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// On SIGTERM, how long in-flight requests may take before connections are closed.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Concurrent HTTP/2 streams per connection.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Open connections at once; further ones wait in the kernel backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server, leaf first.
    pub certificate: PathBuf,
    /// PEM private key of the server (PKCS#8, SEC1 or PKCS#1). Absent: the handshake is
    /// signed by the key store's device key (requires `[keystore]`; the certificate must
    /// certify that key).
    pub private_key: Option<PathBuf>,
    /// PEM CA certificates that client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Serve clients that present no certificate. Only for local experiments: every request
    /// is then anonymous. Off by default; `client_ca` is then still used when a client offers
    /// a certificate.
    #[serde(default)]
    pub insecure_allow_anonymous_clients: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// File the audit trail is appended to, one JSON object per line. Absent: standard output.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The worker binary. Absent: `warden-runtime` beside the `warden` executable.
    pub worker_binary: Option<PathBuf>,
    /// `libonnxruntime.so`, for ONNX models. Absent: the `ORT_DYLIB_PATH` environment variable.
    pub onnxruntime_library: Option<PathBuf>,
    /// Directories holding the CUDA, cuDNN and TensorRT libraries that ONNX Runtime's GPU
    /// providers need (e.g. the `nvidia/*/lib` directories of the pip packages that come with
    /// `onnxruntime-gpu`). Loaded by a GPU model's worker before its sandbox; absent: found
    /// through the system's library cache.
    #[serde(default)]
    pub cuda_library_dirs: Vec<PathBuf>,
    /// Threads ONNX Runtime uses inside one inference.
    #[serde(default = "one")]
    pub intra_op_threads: usize,
    /// Inferences one worker runs at the same time.
    #[serde(default = "default_worker_concurrency")]
    pub worker_concurrency: usize,
    /// Time a worker gets to load its model and say hello.
    #[serde(default = "default_worker_startup_timeout_ms")]
    pub worker_startup_timeout_ms: u64,
    /// How long a worker, having answered, polls for the next request before its thread
    /// sleeps, in µs (0, the default: sleep at once). CPU for latency: a request inside the
    /// window skips the wake-up of a sleeping thread; on a machine without spare cores it
    /// costs throughput.
    #[serde(default = "default_worker_poll_us")]
    pub worker_poll_us: u64,
    /// The shared-memory tensor arena of each worker process, in MiB (0: none, every tensor
    /// crosses the worker's socket). Tensors of 16 KiB and more go through it.
    #[serde(default = "default_shared_memory_mib")]
    pub shared_memory_mib: u64,
    /// Restarts of a worker that died, and when a model is quarantined instead.
    #[serde(default)]
    pub restart: RestartConfig,
}

/// `[runtime.restart]`: a dead worker is restarted after a backoff that doubles with each
/// recent death; `max_crashes` deaths within `window_s` quarantine the model (it is no longer
/// restarted, requests get 503, `warden status` names it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartConfig {
    /// Deaths within the window that quarantine the model (1: never restart).
    #[serde(default = "default_max_crashes")]
    pub max_crashes: u32,
    #[serde(default = "default_crash_window_s")]
    pub window_s: u64,
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
}

impl Default for RestartConfig {
    fn default() -> Self {
        RestartConfig {
            max_crashes: default_max_crashes(),
            window_s: default_crash_window_s(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
        }
    }
}

impl RestartConfig {
    pub fn policy(&self) -> warden_runtime_client::worker::RestartPolicy {
        warden_runtime_client::worker::RestartPolicy {
            max_crashes: self.max_crashes,
            window: Duration::from_secs(self.window_s),
            backoff_initial: Duration::from_millis(self.backoff_initial_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
        }
    }
}

/// `[model.batching]`: dynamic batching for a model whose inputs have a dynamic first
/// dimension (others are served one request at a time, and the load says so in the log).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    /// Extra time to wait for more requests once a session is free, in microseconds (0: a
    /// batch holds what queued while the sessions were busy, and adds no latency).
    #[serde(default)]
    pub window_us: u64,
    /// A batch runs as soon as it holds this many rows.
    #[serde(default = "default_batch_rows")]
    pub max_rows: usize,
}

impl BatchingConfig {
    pub fn policy(&self) -> warden_runtime_client::worker::BatchPolicy {
        warden_runtime_client::worker::BatchPolicy {
            window: Duration::from_micros(self.window_us),
            max_rows: self.max_rows,
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            worker_binary: None,
            onnxruntime_library: None,
            cuda_library_dirs: Vec::new(),
            intra_op_threads: one(),
            worker_concurrency: default_worker_concurrency(),
            worker_startup_timeout_ms: default_worker_startup_timeout_ms(),
            worker_poll_us: default_worker_poll_us(),
            shared_memory_mib: default_shared_memory_mib(),
            restart: RestartConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The agent's private state: verified model copies. Created with mode 0700.
    #[serde(default = "default_state_directory")]
    pub directory: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            directory: default_state_directory(),
        }
    }
}

fn default_state_directory() -> PathBuf {
    PathBuf::from("/var/lib/warden")
}

/// Who may sign the models this appliance serves. A model loads when its signature verifies
/// against any one anchor.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// PEM public keys of model signers (OMS key method).
    #[serde(default)]
    pub model_signer_keys: Vec<PathBuf>,
    /// PEM root certificates for model signers (OMS certificate method).
    #[serde(default)]
    pub model_signer_roots: Vec<PathBuf>,
}

/// Where the key store is: in this process (a backend of `warden_keystore`) or behind
/// the key service's socket (`warden keyd`). Exactly one of `backend` and `keyd_socket`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "toml::Table")]
pub enum KeystoreConfig {
    /// `backend = "software-development-only"`, `dir = …`: key files in this process, for the
    /// demo and development. A TPM or an HSM is reached only through the key service.
    Development(warden_keystore::config::SoftwareConfig),
    /// `keyd_socket = "/run/warden/keyd.sock"`.
    Keyd { socket: PathBuf },
}

impl TryFrom<toml::Table> for KeystoreConfig {
    type Error = String;

    fn try_from(table: toml::Table) -> Result<Self, String> {
        match (table.contains_key("backend"), table.get("keyd_socket")) {
            (true, Some(_)) => Err(
                "set either keystore.backend = \"software-development-only\" (development) or \
                 keystore.keyd_socket (the key service), not both"
                    .into(),
            ),
            (false, None) => Err(
                "name keystore.keyd_socket (the key service, which holds the TPM or HSM) or, \
                 for development, keystore.backend = \"software-development-only\""
                    .into(),
            ),
            (false, Some(socket)) => {
                if let Some(other) = table.keys().find(|k| *k != "keyd_socket") {
                    return Err(format!(
                        "unknown field keystore.{other}: with keyd_socket the key service holds \
                         the backend's settings"
                    ));
                }
                let socket = socket
                    .as_str()
                    .ok_or("keystore.keyd_socket must be a path string")?;
                Ok(KeystoreConfig::Keyd {
                    socket: PathBuf::from(socket),
                })
            }
            (true, None) => {
                let backend: BackendConfig = toml::Value::Table(table)
                    .try_into()
                    .map_err(|e| format!("keystore: {}", e.to_string().trim_end()))?;
                match backend {
                    BackendConfig::Software(c) => Ok(KeystoreConfig::Development(c)),
                    BackendConfig::Tpm(_) | BackendConfig::Pkcs11(_) => Err(
                        "keystore.backend: the agent reaches a TPM or an HSM only through the key \
                         service: give this backend to warden-keyd (keyd.toml) and set \
                         keystore.keyd_socket here"
                            .into(),
                    ),
                }
            }
        }
    }
}

/// Model admission: `policies/serving/startup.rego` decides every load and every refresh.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionConfig {
    /// The policy set (its canonical digest must equal the release's `policySetDigest`).
    pub policy_directory: PathBuf,
    /// Release stages this appliance serves.
    #[serde(default = "default_allowed_stages")]
    pub allowed_stages: Vec<warden_attest::release::Stage>,
    /// The fleet authority's signed revocation list. Once one was accepted, its absence is
    /// refused (`revocation_list_missing`).
    pub revocation_list: Option<PathBuf>,
    /// Seconds between re-runs of admission on every loaded version (also on SIGHUP).
    #[serde(default = "default_refresh_interval_s")]
    pub refresh_interval_s: u64,
}

fn default_allowed_stages() -> Vec<warden_attest::release::Stage> {
    vec![warden_attest::release::Stage::Approved]
}
fn default_refresh_interval_s() -> u64 {
    60
}

impl AdmissionConfig {
    pub fn refresh_interval(&self) -> Duration {
        Duration::from_secs(self.refresh_interval_s)
    }
}

/// The largest GPU memory budget one model may ask for, in MiB.
const MAX_GPU_BUDGET_MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Name in the API (`/v2/models/{name}`).
    pub name: String,
    /// Version in the API (`/v2/models/{name}/versions/{version}`).
    pub version: String,
    /// The signed model directory.
    pub directory: PathBuf,
    /// The ONNX file inside `directory` that the engine loads.
    pub file: PathBuf,
    /// The OMS signature. Absent: `model.sig` inside `directory`.
    pub signature: Option<PathBuf>,
    /// The release authority's signed release statement (with `[keystore]`).
    pub release: Option<PathBuf>,
    /// Signed attestations the release requires (with `[keystore]`).
    #[serde(default)]
    pub attestations: Vec<PathBuf>,
    /// Declared value ranges per input tensor (`[model.inputs.<name>] min/max`): every element
    /// must lie within them, or the request is refused before it reaches the worker.
    #[serde(default)]
    pub inputs: std::collections::BTreeMap<String, InputRange>,
    /// Dynamic batching (`[model.batching]`). Absent: off.
    pub batching: Option<BatchingConfig>,
    /// The device the model runs on (`[model.accelerator]`). Absent: the CPU.
    pub accelerator: Option<AcceleratorConfig>,
}

impl ModelConfig {
    /// What the worker is asked for: the configured device, or the CPU.
    pub fn device_request(&self) -> warden_runtime_client::device::DeviceRequest {
        match &self.accelerator {
            None => warden_runtime_client::device::DeviceRequest::default(),
            Some(a) => warden_runtime_client::device::DeviceRequest {
                device: a.device,
                memory_budget_bytes: a.memory_budget_mib.map(|mib| mib.saturating_mul(1 << 20)),
                cpu_fallback: a.cpu_fallback,
            },
        }
    }
}

/// `[model.accelerator]`: where the model runs. A GPU needs a memory budget; a GPU that cannot
/// be used (absent, its ONNX Runtime provider or CUDA libraries missing) refuses the load
/// unless `cpu_fallback` is set, and then the fallback is reported by `warden status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceleratorConfig {
    /// `"cpu"`, `"cuda:N"` or `"tensorrt:N"` (N: the GPU's ordinal, as `warden status` lists).
    pub device: warden_runtime_client::device::Device,
    /// GPU memory the model may hold, in MiB; the budgets of the models on one GPU must fit in
    /// its memory.
    pub memory_budget_mib: Option<u64>,
    /// Run on the CPU when the GPU cannot be used, instead of refusing to load.
    #[serde(default)]
    pub cpu_fallback: bool,
}

/// Inclusive bounds on the elements of one input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRange {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl ModelConfig {
    pub fn signature_path(&self) -> PathBuf {
        self.signature
            .clone()
            .unwrap_or_else(|| self.directory.join("model.sig"))
    }
}

fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_handshake_timeout_ms() -> u64 {
    10_000
}
fn default_shutdown_grace_ms() -> u64 {
    10_000
}
fn default_max_concurrent_streams() -> u32 {
    128
}
fn default_max_connections() -> usize {
    1024
}
fn one() -> usize {
    1
}
fn default_worker_concurrency() -> usize {
    2
}
fn default_worker_poll_us() -> u64 {
    warden_runtime_client::worker::DEFAULT_POLL_WINDOW.as_micros() as u64
}

fn default_shared_memory_mib() -> u64 {
    (warden_runtime_client::worker::DEFAULT_SHARED_MEMORY_BYTES >> 20) as u64
}

/// The largest tensor arena a worker may get, in MiB.
const MAX_SHARED_MEMORY_MIB: u64 = 1024;

fn default_worker_startup_timeout_ms() -> u64 {
    30_000
}
fn default_max_crashes() -> u32 {
    5
}
fn default_crash_window_s() -> u64 {
    60
}
fn default_backoff_initial_ms() -> u64 {
    100
}
fn default_backoff_max_ms() -> u64 {
    10_000
}
fn default_batch_rows() -> usize {
    64
}

impl ServerConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

impl Config {
    /// Reads, parses and validates a config file. Relative paths inside it are taken relative
    /// to the file's directory, so a config and its PKI can move together.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, path, base)
    }

    /// Parses and validates config text; `origin` names it in errors, `base` anchors relative
    /// paths.
    pub fn parse(text: &str, origin: &Path, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.anchor_paths(base);
        config.validate(origin)?;
        Ok(config)
    }

    fn anchor_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.tls.certificate);
        if let Some(p) = self.tls.private_key.as_mut() {
            fix(p);
        }
        match self.keystore.as_mut() {
            Some(KeystoreConfig::Keyd { socket }) => fix(socket),
            Some(KeystoreConfig::Development(c)) => fix(&mut c.dir),
            None => {}
        }
        if let Some(a) = self.admission.as_mut() {
            fix(&mut a.policy_directory);
            if let Some(p) = a.revocation_list.as_mut() {
                fix(p);
            }
        }
        if let Some(p) = self.tls.client_ca.as_mut() {
            fix(p);
        }
        if let Some(p) = self.admin.as_mut().and_then(|a| a.client_ca.as_mut()) {
            fix(p);
        }
        fix(&mut self.state.directory);
        if let Some(p) = self.audit.path.as_mut() {
            fix(p);
        }
        if let Some(p) = self.runtime.worker_binary.as_mut() {
            fix(p);
        }
        if let Some(p) = self.runtime.onnxruntime_library.as_mut() {
            fix(p);
        }
        self.runtime.cuda_library_dirs.iter_mut().for_each(fix);
        self.trust.model_signer_keys.iter_mut().for_each(fix);
        self.trust.model_signer_roots.iter_mut().for_each(fix);
        self.gateway.anchor_paths(&fix);
        for m in &mut self.models {
            fix(&mut m.directory);
            if let Some(p) = m.signature.as_mut() {
                fix(p);
            }
            if let Some(p) = m.release.as_mut() {
                fix(p);
            }
            m.attestations.iter_mut().for_each(fix);
        }
    }

    fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: origin.to_path_buf(),
            field: field.to_string(),
            message,
        };
        if self.schema_version != SCHEMA_VERSION {
            return Err(invalid(
                "schema_version",
                format!(
                    "this build reads schema {SCHEMA_VERSION}, the file says {}",
                    self.schema_version
                ),
            ));
        }
        if let Err(e) = self.sandbox.validate() {
            return Err(invalid(&format!("sandbox.{}", e.field), e.message));
        }
        let s = &self.server;
        if !(1024..=1024 * 1024 * 1024).contains(&s.max_body_bytes) {
            return Err(invalid(
                "server.max_body_bytes",
                "must be between 1 KiB and 1 GiB".into(),
            ));
        }
        if !(1024..=1024 * 1024).contains(&s.max_header_bytes) {
            return Err(invalid(
                "server.max_header_bytes",
                "must be between 1 KiB and 1 MiB".into(),
            ));
        }
        for (field, ms) in [
            ("server.request_timeout_ms", s.request_timeout_ms),
            ("server.handshake_timeout_ms", s.handshake_timeout_ms),
            ("server.shutdown_grace_ms", s.shutdown_grace_ms),
            (
                "runtime.worker_startup_timeout_ms",
                self.runtime.worker_startup_timeout_ms,
            ),
        ] {
            if !(1..=3_600_000).contains(&ms) {
                return Err(invalid(field, "must be between 1 ms and one hour".into()));
            }
        }
        if s.max_concurrent_streams == 0 {
            return Err(invalid(
                "server.max_concurrent_streams",
                "must be at least 1".into(),
            ));
        }
        if s.max_connections == 0 {
            return Err(invalid(
                "server.max_connections",
                "must be at least 1".into(),
            ));
        }
        if self.tls.client_ca.is_none() && !self.tls.insecure_allow_anonymous_clients {
            return Err(invalid(
                "tls.client_ca",
                "mutual TLS is required: name the CA that client certificates chain to \
                 (or set tls.insecure_allow_anonymous_clients = true for a local experiment)"
                    .into(),
            ));
        }
        let r = &self.runtime;
        if !(1..=256).contains(&r.intra_op_threads) {
            return Err(invalid(
                "runtime.intra_op_threads",
                "must be between 1 and 256".into(),
            ));
        }
        if !(1..=1024).contains(&r.worker_concurrency) {
            return Err(invalid(
                "runtime.worker_concurrency",
                "must be between 1 and 1024".into(),
            ));
        }
        let rs = &r.restart;
        if !(1..=1000).contains(&rs.max_crashes) {
            return Err(invalid(
                "runtime.restart.max_crashes",
                "must be between 1 and 1000".into(),
            ));
        }
        if !(1..=86_400).contains(&rs.window_s) {
            return Err(invalid(
                "runtime.restart.window_s",
                "must be between 1 s and one day".into(),
            ));
        }
        if !(1..=3_600_000).contains(&rs.backoff_max_ms)
            || rs.backoff_initial_ms > rs.backoff_max_ms
        {
            return Err(invalid(
                "runtime.restart.backoff_max_ms",
                "must be between 1 ms and one hour, and not below backoff_initial_ms".into(),
            ));
        }
        let max_poll = warden_runtime_client::worker::MAX_POLL_WINDOW.as_micros();
        if u128::from(self.runtime.worker_poll_us) > max_poll {
            return Err(invalid(
                "runtime.worker_poll_us",
                format!("must be at most {max_poll} ({} ms)", max_poll / 1000),
            ));
        }
        // The arena is mapped into the worker, whose address space the sandbox limits.
        let arena = self.runtime.shared_memory_mib << 20;
        if self.runtime.shared_memory_mib > MAX_SHARED_MEMORY_MIB
            || arena > self.sandbox.address_space_bytes / 2
        {
            return Err(invalid(
                "runtime.shared_memory_mib",
                format!(
                    "must be at most {MAX_SHARED_MEMORY_MIB} and at most half of \
                     sandbox.address_space_bytes ({} MiB)",
                    self.sandbox.address_space_bytes >> 20
                ),
            ));
        }
        for m in &self.models {
            if let Some(a) = &m.accelerator {
                let field = format!("model.{}.accelerator", m.name);
                m.device_request()
                    .validate()
                    .map_err(|e| invalid(&field, e))?;
                if a.memory_budget_mib
                    .is_some_and(|mib| mib > MAX_GPU_BUDGET_MIB)
                {
                    return Err(invalid(
                        &format!("{field}.memory_budget_mib"),
                        format!("must be at most {MAX_GPU_BUDGET_MIB} (1 TiB)"),
                    ));
                }
            }
            if let Some(b) = &m.batching {
                if b.window_us > 100_000 {
                    return Err(invalid(
                        &format!("model.{}.batching.window_us", m.name),
                        "must be at most 100000 (100 ms): the window is latency every request pays"
                            .into(),
                    ));
                }
                if !(2..=4096).contains(&b.max_rows) {
                    return Err(invalid(
                        &format!("model.{}.batching.max_rows", m.name),
                        "must be between 2 and 4096".into(),
                    ));
                }
            }
        }
        self.validate_trust(origin)?;
        if let Some(a) = &self.admin {
            if a.client_ca.is_none() && self.keystore.is_none() {
                return Err(invalid(
                    "admin.client_ca",
                    "the admin listener requires client certificates: name the fleet CA \
                     (or configure a [keystore] whose fleet-authority anchors are certificates)"
                        .into(),
                ));
            }
            if a.max_upload_bytes < 1024 {
                return Err(invalid(
                    "admin.max_upload_bytes",
                    "must be at least 1 KiB".into(),
                ));
            }
            if !(1..=1_000_000).contains(&a.max_entries) {
                return Err(invalid(
                    "admin.max_entries",
                    "must be between 1 and 1000000".into(),
                ));
            }
        }
        if self.keystore.is_none()
            && !self.models.is_empty()
            && self.trust.model_signer_keys.is_empty()
            && self.trust.model_signer_roots.is_empty()
        {
            return Err(invalid(
                "trust",
                "models are configured but no model signer is trusted: set \
                 trust.model_signer_keys or trust.model_signer_roots"
                    .into(),
            ));
        }
        self.gateway
            .validate()
            .and_then(|()| self.metrics.validate())
            .map_err(|(field, message)| invalid(&field, message))?;
        let mut seen = std::collections::HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            let field = |f: &str| format!("model[{i}].{f}");
            if !valid_name(&m.name) {
                return Err(invalid(
                    &field("name"),
                    format!(
                        "{:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
                        m.name
                    ),
                ));
            }
            if !valid_name(&m.version) {
                return Err(invalid(
                    &field("version"),
                    format!(
                        "{:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
                        m.version
                    ),
                ));
            }
            if !seen.insert((m.name.clone(), m.version.clone())) {
                return Err(invalid(
                    &field("version"),
                    format!("model {} version {} is configured twice", m.name, m.version),
                ));
            }
            for (input, r) in &m.inputs {
                let f = field(&format!("inputs.{input}"));
                if r.min.is_none() && r.max.is_none() {
                    return Err(invalid(&f, "name min, max or both".into()));
                }
                if r.min.is_some_and(|v| !v.is_finite()) || r.max.is_some_and(|v| !v.is_finite()) {
                    return Err(invalid(&f, "min and max must be finite numbers".into()));
                }
                if let (Some(lo), Some(hi)) = (r.min, r.max)
                    && lo > hi
                {
                    return Err(invalid(&f, format!("min {lo} is above max {hi}")));
                }
            }
            if m.file.is_absolute()
                || m.file
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(invalid(
                    &field("file"),
                    "must be a plain relative path inside the model directory".into(),
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    /// The rules between `[keystore]`, `[admission]`, `[trust]`, `tls.private_key` and the
    /// models' release documents.
    fn validate_trust(&self, origin: &Path) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: &str| ConfigError::Invalid {
            path: origin.to_path_buf(),
            field: field.to_string(),
            message: message.to_string(),
        };
        match (&self.keystore, &self.admission) {
            (Some(_), None) => {
                return Err(invalid(
                    "admission",
                    "a [keystore] is configured: name the policy set in \
                     [admission] policy_directory, so every load is decided by startup.rego",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "admission",
                    "admission verifies against the key store's anchors and counters: \
                     configure [keystore] too",
                ));
            }
            _ => {}
        }
        if self.keystore.is_some() {
            // One source of anchors: files beside a key store would be a silent second root.
            if !self.trust.model_signer_keys.is_empty() {
                return Err(invalid(
                    "trust.model_signer_keys",
                    "with a [keystore] the model signers are the key store's anchors; \
                     remove the file-based anchors",
                ));
            }
            if !self.trust.model_signer_roots.is_empty() {
                return Err(invalid(
                    "trust.model_signer_roots",
                    "with a [keystore] the model signers are the key store's anchors; \
                     remove the file-based anchors",
                ));
            }
        } else {
            if self.tls.private_key.is_none() {
                return Err(invalid(
                    "tls.private_key",
                    "required without a [keystore] (with one, the device key signs handshakes)",
                ));
            }
            for (i, m) in self.models.iter().enumerate() {
                if m.release.is_some() {
                    return Err(invalid(
                        &format!("model[{i}].release"),
                        "release statements are checked only with [keystore] and [admission]",
                    ));
                }
                if !m.attestations.is_empty() {
                    return Err(invalid(
                        &format!("model[{i}].attestations"),
                        "attestations are checked only with [keystore] and [admission]",
                    ));
                }
            }
        }
        if let Some(a) = &self.admission {
            if a.allowed_stages.is_empty() {
                return Err(invalid(
                    "admission.allowed_stages",
                    "name at least one stage (e.g. [\"Approved\"])",
                ));
            }
            if !(1..=86_400).contains(&a.refresh_interval_s) {
                return Err(invalid(
                    "admission.refresh_interval_s",
                    "must be between 1 second and one day",
                ));
            }
        }
        Ok(())
    }
}

/// Names that are safe in URLs, logs and file names.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s != "."
        && s != ".."
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
schema_version = 1
[server]
listen = "127.0.0.1:8443"
[tls]
certificate = "pki/server.pem"
private_key = "pki/server.key"
client_ca = "pki/ca.pem"
[trust]
model_signer_keys = ["signer.pub"]
[[model]]
name = "demo"
version = "1"
directory = "models/demo"
file = "model.onnx"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(
            text,
            Path::new("/etc/warden/warden.toml"),
            Path::new("/etc/warden"),
        )
    }

    #[test]
    fn good_config_loads_with_defaults_and_anchored_paths() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.server.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(c.tls.certificate, Path::new("/etc/warden/pki/server.pem"));
        assert_eq!(
            c.models[0].signature_path(),
            Path::new("/etc/warden/models/demo/model.sig")
        );
        assert!(!c.tls.insecure_allow_anonymous_clients);
    }

    #[test]
    fn unknown_field_is_named() {
        let text = GOOD.replace("[server]", "[server]\nlisten_adress = \"x\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("listen_adress"), "{err}");
    }

    #[test]
    fn admin_listener_requires_a_client_ca_and_anchors_it() {
        let text = format!("{GOOD}\n[admin]\nlisten = \"127.0.0.1:9443\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("admin.client_ca"), "{err}");
        let text = format!(
            "{GOOD}\n[admin]\nlisten = \"127.0.0.1:9443\"\nclient_ca = \"pki/fleet-ca.pem\"\n"
        );
        let c = parse(&text).unwrap();
        let admin = c.admin.unwrap();
        assert_eq!(
            admin.client_ca.as_deref(),
            Some(Path::new("/etc/warden/pki/fleet-ca.pem"))
        );
        assert_eq!(admin.max_entries, 10_000);
        let text = format!(
            "{GOOD}\n[admin]\nlisten = \"127.0.0.1:9443\"\nclient_ca = \"x\"\nmax_entries = 0\n"
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("admin.max_entries"), "{err}");
    }

    #[test]
    fn mtls_is_required_unless_opted_out_by_name() {
        let text = GOOD.replace("client_ca = \"pki/ca.pem\"\n", "");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("tls.client_ca"), "{err}");
        let text = GOOD.replace(
            "client_ca = \"pki/ca.pem\"\n",
            "insecure_allow_anonymous_clients = true\n",
        );
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn cross_field_rules() {
        let err = parse(&GOOD.replace("schema_version = 1", "schema_version = 2"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("schema_version"), "{err}");
        let err = parse(&GOOD.replace("model_signer_keys = [\"signer.pub\"]", ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`trust`"), "{err}");
        let err = parse(&GOOD.replace("file = \"model.onnx\"", "file = \"../x.onnx\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("model[0].file"), "{err}");
        let err = parse(&GOOD.replace("name = \"demo\"", "name = \"de mo\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("model[0].name"), "{err}");
        let twice = format!(
            "{GOOD}\n[[model]]\nname = \"demo\"\nversion = \"1\"\ndirectory = \"d\"\nfile = \"m.onnx\"\n"
        );
        let err = parse(&twice).unwrap_err().to_string();
        assert!(err.contains("configured twice"), "{err}");
        let err = parse(&format!(
            "{GOOD}[model.inputs.input]\nmin = 2.0\nmax = 1.0\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("model[0].inputs.input"), "{err}");
        let err = parse(&GOOD.replace("[server]", "[server]\nmax_body_bytes = 10"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.max_body_bytes"), "{err}");
    }

    const KEYSTORE: &str = r#"
schema_version = 1
[server]
listen = "127.0.0.1:8443"
[tls]
certificate = "pki/server.pem"
client_ca = "pki/ca.pem"
[keystore]
backend = "software-development-only"
dir = "keystore"
[admission]
policy_directory = "policies"
revocation_list = "revocations.json"
[[model]]
name = "demo"
version = "1"
directory = "models/demo"
file = "model.onnx"
release = "models/demo.release.json"
attestations = ["models/demo.slsa.json"]
"#;

    #[test]
    fn keystore_mode_loads_with_defaults_and_anchored_paths() {
        let c = parse(KEYSTORE).unwrap();
        assert_eq!(
            c.keystore,
            Some(KeystoreConfig::Development(
                warden_keystore::config::SoftwareConfig {
                    dir: PathBuf::from("/etc/warden/keystore")
                }
            ))
        );
        let a = c.admission.as_ref().unwrap();
        assert_eq!(a.policy_directory, Path::new("/etc/warden/policies"));
        assert_eq!(
            a.allowed_stages,
            vec![warden_attest::release::Stage::Approved]
        );
        assert_eq!(a.refresh_interval_s, 60);
        assert_eq!(
            a.revocation_list.as_deref(),
            Some(Path::new("/etc/warden/revocations.json"))
        );
        assert_eq!(
            c.models[0].release.as_deref(),
            Some(Path::new("/etc/warden/models/demo.release.json"))
        );
        assert_eq!(
            c.models[0].attestations,
            vec![PathBuf::from("/etc/warden/models/demo.slsa.json")]
        );
        assert!(c.tls.private_key.is_none());
        let keyd = KEYSTORE.replace(
            "backend = \"software-development-only\"\ndir = \"keystore\"",
            "keyd_socket = \"/run/warden/keyd.sock\"",
        );
        assert_eq!(
            parse(&keyd).unwrap().keystore,
            Some(KeystoreConfig::Keyd {
                socket: PathBuf::from("/run/warden/keyd.sock")
            })
        );
    }

    #[test]
    fn keystore_rules_name_the_field() {
        let err_of = |text: &str| parse(text).unwrap_err().to_string();
        // Both, or neither, of backend and keyd_socket.
        let both = KEYSTORE.replace("dir = \"keystore\"", "dir = \"k\"\nkeyd_socket = \"/s\"");
        assert!(err_of(&both).contains("not both"), "{}", err_of(&both));
        let neither = KEYSTORE.replace(
            "backend = \"software-development-only\"\ndir = \"keystore\"",
            "",
        );
        assert!(
            err_of(&neither).contains("keystore.backend"),
            "{}",
            err_of(&neither)
        );
        let stray = KEYSTORE.replace(
            "backend = \"software-development-only\"\ndir = \"keystore\"",
            "keyd_socket = \"/s\"\ntcti = \"x\"",
        );
        assert!(
            err_of(&stray).contains("keystore.tcti"),
            "{}",
            err_of(&stray)
        );
        let typo = KEYSTORE.replace("dir = \"keystore\"", "dri = \"keystore\"");
        assert!(err_of(&typo).contains("dri"), "{}", err_of(&typo));
        // A TPM or an HSM only through the key service: no hardware backend in the agent.
        for hardware in [
            "backend = \"tpm\"\ntcti = \"device:/dev/tpmrm0\"",
            "backend = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = \"t\"\npin_file = \"/p\"",
        ] {
            let in_process = KEYSTORE.replace(
                "backend = \"software-development-only\"\ndir = \"keystore\"",
                hardware,
            );
            let e = err_of(&in_process);
            assert!(
                e.contains("only through the key service") && e.contains("keyd_socket"),
                "{e}"
            );
        }
        // [admission] is required with a key store and refused without.
        let no_admission = KEYSTORE.replace(
            "[admission]\npolicy_directory = \"policies\"\nrevocation_list = \"revocations.json\"\n",
            "",
        );
        assert!(
            err_of(&no_admission).contains("field `admission`"),
            "{}",
            err_of(&no_admission)
        );
        let admission_alone = format!("{GOOD}[admission]\npolicy_directory = \"p\"\n");
        assert!(err_of(&admission_alone).contains("field `admission`"));
        // One source of anchors.
        let files_too = KEYSTORE.replace(
            "[admission]",
            "[trust]\nmodel_signer_keys = [\"s.pub\"]\n[admission]",
        );
        assert!(
            err_of(&files_too).contains("trust.model_signer_keys"),
            "{}",
            err_of(&files_too)
        );
        // The key file is optional only with a key store.
        let no_key = GOOD.replace("private_key = \"pki/server.key\"\n", "");
        assert!(
            err_of(&no_key).contains("tls.private_key"),
            "{}",
            err_of(&no_key)
        );
        // Release documents only with admission.
        let release_in_dev = GOOD.replace(
            "file = \"model.onnx\"",
            "file = \"model.onnx\"\nrelease = \"r.json\"",
        );
        assert!(err_of(&release_in_dev).contains("model[0].release"));
        let interval = KEYSTORE.replace(
            "revocation_list = ",
            "refresh_interval_s = 0\nrevocation_list = ",
        );
        assert!(err_of(&interval).contains("admission.refresh_interval_s"));
        let stages = KEYSTORE.replace(
            "revocation_list = ",
            "allowed_stages = []\nrevocation_list = ",
        );
        assert!(err_of(&stages).contains("admission.allowed_stages"));
        let bad_stage = KEYSTORE.replace(
            "revocation_list = ",
            "allowed_stages = [\"Aproved\"]\nrevocation_list = ",
        );
        assert!(
            err_of(&bad_stage).contains("Aproved"),
            "{}",
            err_of(&bad_stage)
        );
    }

    #[test]
    fn the_worker_polling_window_is_off_by_default_and_bounded() {
        assert_eq!(parse(GOOD).unwrap().runtime.worker_poll_us, 0);
        let c = parse(&format!("{GOOD}[runtime]\nworker_poll_us = 100\n")).unwrap();
        assert_eq!(c.runtime.worker_poll_us, 100);
        assert!(parse(&format!("{GOOD}[runtime]\nworker_poll_us = 10000\n")).is_ok());
        let err = parse(&format!("{GOOD}[runtime]\nworker_poll_us = 10001\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("runtime.worker_poll_us"), "{err}");
        assert!(err.contains("at most 10000"), "{err}");
    }

    #[test]
    fn the_tensor_arena_is_on_by_default_and_bounded() {
        assert_eq!(parse(GOOD).unwrap().runtime.shared_memory_mib, 64);
        let off = parse(&format!("{GOOD}[runtime]\nshared_memory_mib = 0\n")).unwrap();
        assert_eq!(off.runtime.shared_memory_mib, 0);
        assert!(parse(&format!("{GOOD}[runtime]\nshared_memory_mib = 1024\n")).is_ok());
        for bad in [
            "[runtime]\nshared_memory_mib = 1025\n",
            "[runtime]\nshared_memory_mib = 512\n[sandbox]\naddress_space_bytes = 1000000000\n",
        ] {
            let err = parse(&format!("{GOOD}{bad}")).unwrap_err().to_string();
            assert!(err.contains("runtime.shared_memory_mib"), "{err}");
        }
    }

    #[test]
    fn restart_and_batching_are_read_and_checked() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.runtime.restart, RestartConfig::default());
        assert!(
            c.models[0].batching.is_none(),
            "batching is off unless asked for"
        );
        let text = format!(
            "{GOOD}[model.batching]\nwindow_us = 500\nmax_rows = 32\n[runtime.restart]\nmax_crashes = 2\nbackoff_initial_ms = 2000\n"
        );
        let c = parse(&text).unwrap();
        let b = c.models[0].batching.as_ref().unwrap().policy();
        assert_eq!((b.window, b.max_rows), (Duration::from_micros(500), 32));
        let r = c.runtime.restart.policy();
        assert_eq!(r.max_crashes, 2);
        assert_eq!(r.backoff_initial, Duration::from_secs(2));
        for (extra, field) in [
            (
                "[model.batching]\nwindow_us = 200000\n",
                "model.demo.batching.window_us",
            ),
            (
                "[model.batching]\nmax_rows = 1\n",
                "model.demo.batching.max_rows",
            ),
            ("[model.batching]\nwindow_ms = 1\n", "window_ms"),
            (
                "[runtime.restart]\nmax_crashes = 0\n",
                "runtime.restart.max_crashes",
            ),
            (
                "[runtime.restart]\nbackoff_initial_ms = 20000\nbackoff_max_ms = 10000\n",
                "runtime.restart.backoff_max_ms",
            ),
        ] {
            let err = parse(&format!("{GOOD}{extra}")).unwrap_err().to_string();
            assert!(err.contains(field), "{extra}: {err}");
        }
    }

    #[test]
    fn accelerator_is_read_and_checked() {
        use warden_runtime_client::device::{Device, DeviceRequest};
        let c = parse(GOOD).unwrap();
        assert_eq!(c.models[0].device_request(), DeviceRequest::default());
        let c = parse(&format!(
            "{GOOD}[model.accelerator]\ndevice = \"cuda:1\"\nmemory_budget_mib = 2048\ncpu_fallback = true\n"
        ))
        .unwrap();
        assert_eq!(
            c.models[0].device_request(),
            DeviceRequest {
                device: Device::Cuda(1),
                memory_budget_bytes: Some(2048 << 20),
                cpu_fallback: true,
            }
        );
        for (extra, wanted) in [
            ("device = \"cuda:0\"\n", "needs a GPU memory budget"),
            (
                "device = \"cuda:0\"\nmemory_budget_mib = 0\n",
                "must be above 0",
            ),
            (
                "device = \"cuda:0\"\nmemory_budget_mib = 2000000\n",
                "memory_budget_mib",
            ),
            (
                "device = \"cpu\"\nmemory_budget_mib = 10\n",
                "GPU device only",
            ),
            ("device = \"cpu\"\ncpu_fallback = true\n", "GPU device only"),
            ("device = \"gpu0\"\n", "cuda:N"),
            (
                "device = \"cuda:0\"\nmemory_budget_mib = 1\nfallback = true\n",
                "fallback",
            ),
        ] {
            let err = parse(&format!("{GOOD}[model.accelerator]\n{extra}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(wanted), "{extra}: {err}");
        }
    }

    #[test]
    fn reference_config_is_valid() {
        let text = include_str!("../warden.example.toml");
        parse(text).unwrap();
    }
}
