//! Model-extraction and abuse signals per identity (the seed's risks table): within a fixed
//! window, an identity that sends too many *distinct* inputs (a sweep across the input space,
//! scraping) or too many *near-duplicates* of earlier inputs (probing a decision boundary with
//! small perturbations) is flagged, and the configured action applies to it until the window
//! ends: `throttle` (429), `label_only` (outputs reduced to the configured label outputs, no
//! scores) or `deny` (403). Each flag is counted in the metrics and audited with its signal.
//!
//! Inputs are remembered only as keyed 64-bit hashes (exact bytes, and a coarse form where
//! floats keep their sign, exponent and 4 mantissa bits: values within about 6% collide),
//! never as data; the state per identity is bounded by the thresholds.

use serde::Deserialize;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use warden_runtime_client::tensor::{DataType, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbuseAction {
    Throttle,
    LabelOnly,
    Deny,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbuseConfig {
    /// Watch inference requests per identity. Off by default.
    #[serde(default)]
    pub enabled: bool,
    /// Length of the observation window, seconds.
    #[serde(default = "default_window_s")]
    pub window_s: u64,
    /// Distinct inputs one identity may send per window before it is flagged as sweeping.
    #[serde(default = "default_max_distinct")]
    pub max_distinct_inputs: u32,
    /// Near-duplicate inputs (same coarse form, different bytes) per window before it is
    /// flagged as probing.
    #[serde(default = "default_max_near")]
    pub max_near_duplicates: u32,
    /// What happens to a flagged identity until its window ends.
    #[serde(default = "default_action")]
    pub action: AbuseAction,
    /// With `label_only`: the outputs still returned (the others, such as scores, are not).
    #[serde(default = "default_label_outputs")]
    pub label_outputs: Vec<String>,
}

impl Default for AbuseConfig {
    fn default() -> Self {
        AbuseConfig {
            enabled: false,
            window_s: default_window_s(),
            max_distinct_inputs: default_max_distinct(),
            max_near_duplicates: default_max_near(),
            action: default_action(),
            label_outputs: default_label_outputs(),
        }
    }
}

fn default_window_s() -> u64 {
    60
}
fn default_max_distinct() -> u32 {
    1000
}
fn default_max_near() -> u32 {
    100
}
fn default_action() -> AbuseAction {
    AbuseAction::LabelOnly
}
fn default_label_outputs() -> Vec<String> {
    vec!["label".into()]
}

impl AbuseConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, m: &str| Err((format!("gateway.abuse.{f}"), m.to_string()));
        if !(1..=86_400).contains(&self.window_s) {
            return bad("window_s", "must be between 1 and 86400 seconds");
        }
        if !(1..=1_000_000).contains(&self.max_distinct_inputs) {
            return bad("max_distinct_inputs", "must be between 1 and 1000000");
        }
        if !(1..=1_000_000).contains(&self.max_near_duplicates) {
            return bad("max_near_duplicates", "must be between 1 and 1000000");
        }
        if self.action == AbuseAction::LabelOnly && self.label_outputs.is_empty() {
            return bad("label_outputs", "name the outputs label_only keeps");
        }
        Ok(())
    }
}

/// What the detector says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbuseVerdict {
    /// `sweep` or `near_duplicates`: why the identity is flagged in this window.
    pub signal: &'static str,
    pub action: AbuseAction,
    /// The request is the one that raised the flag (audit and count it once).
    pub newly_flagged: bool,
}

struct Window {
    start: Instant,
    exact: HashSet<u64>,
    /// coarse hash → an exact hash seen with it.
    coarse: HashMap<u64, u64>,
    near: u32,
    flagged: Option<&'static str>,
}

pub struct AbuseDetector {
    cfg: AbuseConfig,
    keys: RandomState,
    windows: Mutex<HashMap<String, Window>>,
}

/// Identities tracked before finished windows are swept.
const MAX_IDENTITIES: usize = 100_000;

impl AbuseDetector {
    pub fn new(cfg: &AbuseConfig) -> AbuseDetector {
        AbuseDetector {
            cfg: cfg.clone(),
            keys: RandomState::new(),
            windows: Mutex::new(HashMap::new()),
        }
    }

    pub fn label_outputs(&self) -> &[String] {
        &self.cfg.label_outputs
    }

    /// Observes one inference request of `identity`; `Some` when the identity is flagged.
    pub fn observe(&self, identity: &str, inputs: &[Tensor], now: Instant) -> Option<AbuseVerdict> {
        if !self.cfg.enabled {
            return None;
        }
        let (exact, coarse) = self.fingerprints(inputs);
        let window = Duration::from_secs(self.cfg.window_s);
        let mut all = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() >= MAX_IDENTITIES {
            all.retain(|_, w| now.duration_since(w.start) < window);
        }
        let w = all.entry(identity.to_string()).or_insert_with(|| Window {
            start: now,
            exact: HashSet::new(),
            coarse: HashMap::new(),
            near: 0,
            flagged: None,
        });
        if now.duration_since(w.start) >= window {
            *w = Window {
                start: now,
                exact: HashSet::new(),
                coarse: HashMap::new(),
                near: 0,
                flagged: None,
            };
        }
        if let Some(signal) = w.flagged {
            return Some(AbuseVerdict {
                signal,
                action: self.cfg.action,
                newly_flagged: false,
            });
        }
        if !w.exact.contains(&exact) {
            match w.coarse.get(&coarse) {
                Some(seen) if *seen != exact => w.near += 1,
                _ => {}
            }
            w.exact.insert(exact);
            w.coarse.entry(coarse).or_insert(exact);
        }
        let signal = if w.exact.len() as u64 > u64::from(self.cfg.max_distinct_inputs) {
            "sweep"
        } else if w.near > self.cfg.max_near_duplicates {
            "near_duplicates"
        } else {
            return None;
        };
        // Flagged: the remembered hashes are no longer needed for this window.
        w.flagged = Some(signal);
        w.exact = HashSet::new();
        w.coarse = HashMap::new();
        Some(AbuseVerdict {
            signal,
            action: self.cfg.action,
            newly_flagged: true,
        })
    }

    fn fingerprints(&self, inputs: &[Tensor]) -> (u64, u64) {
        let mut exact = self.keys.build_hasher();
        let mut coarse = self.keys.build_hasher();
        for t in inputs {
            for h in [&mut exact, &mut coarse] {
                h.write(t.name.as_bytes());
                for d in &t.shape {
                    h.write_usize(*d);
                }
            }
            exact.write(&t.data);
            match t.dtype {
                DataType::Fp32 => {
                    for b in t.data.chunks_exact(4) {
                        let bits = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                        coarse.write_u32(bits >> 19);
                    }
                }
                DataType::Fp64 => {
                    for b in t.data.chunks_exact(8) {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(b);
                        coarse.write_u64(u64::from_le_bytes(a) >> 48);
                    }
                }
                DataType::Fp16 => {
                    for b in t.data.chunks_exact(2) {
                        coarse.write_u16(u16::from_le_bytes([b[0], b[1]]) >> 6);
                    }
                }
                _ => coarse.write(&t.data),
            }
        }
        (exact.finish(), coarse.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp32(vals: &[f32]) -> Vec<Tensor> {
        let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        vec![Tensor::new("input", DataType::Fp32, vec![1, vals.len()], data.into()).unwrap()]
    }

    fn cfg(distinct: u32, near: u32) -> AbuseConfig {
        AbuseConfig {
            enabled: true,
            window_s: 60,
            max_distinct_inputs: distinct,
            max_near_duplicates: near,
            action: AbuseAction::LabelOnly,
            label_outputs: vec!["label".into()],
        }
    }

    #[test]
    fn repeated_identical_requests_are_not_abuse() {
        let d = AbuseDetector::new(&cfg(3, 2));
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(d.observe("a", &fp32(&[1.0, 2.0]), t0), None);
        }
    }

    #[test]
    fn a_sweep_is_flagged_once_then_stays_flagged_until_the_window_ends() {
        let d = AbuseDetector::new(&cfg(3, 100));
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(d.observe("a", &fp32(&[i as f32 * 100.0]), t0), None);
        }
        let v = d.observe("a", &fp32(&[1e6]), t0).unwrap();
        assert_eq!((v.signal, v.newly_flagged), ("sweep", true));
        let v = d.observe("a", &fp32(&[1.0]), t0).unwrap();
        assert!(!v.newly_flagged);
        // Other identities are not affected; the next window starts clean.
        assert_eq!(d.observe("b", &fp32(&[5.0]), t0), None);
        assert_eq!(
            d.observe("a", &fp32(&[5.0]), t0 + Duration::from_secs(61)),
            None
        );
    }

    #[test]
    fn probing_with_small_perturbations_is_flagged() {
        let d = AbuseDetector::new(&cfg(1000, 2));
        let t0 = Instant::now();
        assert_eq!(d.observe("a", &fp32(&[100.0, 7.0]), t0), None);
        assert_eq!(d.observe("a", &fp32(&[100.5, 7.0]), t0), None);
        assert_eq!(d.observe("a", &fp32(&[100.25, 7.0]), t0), None);
        let v = d.observe("a", &fp32(&[100.75, 7.0]), t0).unwrap();
        assert_eq!(v.signal, "near_duplicates");
        // Far-apart inputs are distinct, not near-duplicates.
        let d = AbuseDetector::new(&cfg(1000, 2));
        for i in 0..50 {
            assert_eq!(d.observe("a", &fp32(&[2.0f32.powi(i)]), t0), None);
        }
    }

    #[test]
    fn disabled_observes_nothing() {
        let mut c = cfg(1, 1);
        c.enabled = false;
        let d = AbuseDetector::new(&c);
        for i in 0..10 {
            assert_eq!(d.observe("a", &fp32(&[i as f32]), Instant::now()), None);
        }
    }
}
