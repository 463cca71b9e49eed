//! `warden-runtime`: the worker process that runs one model version for the agent, inside its
//! sandbox. Arguments, start-up order and exit codes: `warden_runtime::boot`.

fn main() -> std::process::ExitCode {
    warden_runtime::boot::main(warden_runtime::boot::Mode::Serve)
}
