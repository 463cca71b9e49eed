//! What a key store holds, by name: the roles whose trust anchors it keeps and the counters
//! it keeps monotonic.

/// A role whose public trust anchors the key store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Keys or roots that may sign model bundles (OMS).
    ModelSigners,
    /// The registry's release authority: signs release statements.
    ReleaseAuthority,
    /// The fleet authority: pushes bundles, signs revocation lists and policy sets.
    FleetAuthority,
    /// Certificate authorities of the tenants' client certificates (mTLS).
    TenantCas,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 4] = [
        Role::ModelSigners,
        Role::ReleaseAuthority,
        Role::FleetAuthority,
        Role::TenantCas,
    ];

    /// A stable short name (file names, token labels, messages).
    pub fn name(self) -> &'static str {
        match self {
            Role::ModelSigners => "model-signers",
            Role::ReleaseAuthority => "release-authority",
            Role::FleetAuthority => "fleet-authority",
            Role::TenantCas => "tenant-cas",
        }
    }

    /// The role's place in [`Role::ALL`] (NV index and object label offsets of the backends).
    pub fn index(self) -> u32 {
        match self {
            Role::ModelSigners => 0,
            Role::ReleaseAuthority => 1,
            Role::FleetAuthority => 2,
            Role::TenantCas => 3,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A monotonic counter held by the key store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    /// The highest revocation-list serial accepted.
    RevocationSerial,
    /// The highest policy-set serial accepted.
    PolicySetSerial,
}

impl Counter {
    /// A stable short name.
    pub fn name(self) -> &'static str {
        match self {
            Counter::RevocationSerial => "revocation-serial",
            Counter::PolicySetSerial => "policy-set-serial",
        }
    }

    /// The counter's offset in a backend's counter area.
    pub fn index(self) -> u32 {
        match self {
            Counter::RevocationSerial => 0,
            Counter::PolicySetSerial => 1,
        }
    }
}

impl std::fmt::Display for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
