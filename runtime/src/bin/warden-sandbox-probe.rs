//! `warden-sandbox-probe`: starts exactly like `warden-runtime` (same arguments, same model
//! load, same sandbox), then, instead of serving, tries what the sandbox must forbid and
//! writes a JSON report to its socket. Used by `runtime/tests/sandbox.rs` and by operators to
//! check a host (`warden check` can run it); it holds nothing a worker does not.

fn main() -> std::process::ExitCode {
    warden_runtime::boot::main(warden_runtime::boot::Mode::Probe)
}
