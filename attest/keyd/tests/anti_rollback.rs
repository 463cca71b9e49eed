//! The anti-rollback paths of revocation lists and policy sets on a TPM's NV counters, which
//! outlive a restart of the process that advanced them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../tests/anti_rollback/mod.rs"]
mod anti_rollback;
mod devices;

use anti_rollback::{policy_set_anti_rollback, revocation_anti_rollback};
use warden_keyd::tpm::keystore::TpmKeyStore;
use warden_keystore::config::TpmConfig;
use warden_keystore::{Counter, KeyStore as _};

#[test]
fn revocation_list_refuses_older_lists_tpm_counter() {
    let tpm = devices::Swtpm::start();
    let cfg = TpmConfig {
        tcti: tpm.tcti.clone(),
        seal_pcrs: vec![16],
    };
    let store = TpmKeyStore::open(&cfg).unwrap();
    revocation_anti_rollback(&store);
    drop(store);
    // The TPM remembers across a restart of the agent.
    let store = TpmKeyStore::open(&cfg).unwrap();
    assert_eq!(store.counter(Counter::RevocationSerial).unwrap(), 6);
}

#[test]
fn policy_sets_refuse_older_serials_tpm_counter() {
    let tpm = devices::Swtpm::start();
    let cfg = TpmConfig {
        tcti: tpm.tcti.clone(),
        seal_pcrs: vec![16],
    };
    let store = TpmKeyStore::open(&cfg).unwrap();
    policy_set_anti_rollback(&store);
    drop(store);
    let store = TpmKeyStore::open(&cfg).unwrap();
    assert_eq!(store.counter(Counter::PolicySetSerial).unwrap(), 4);
}
