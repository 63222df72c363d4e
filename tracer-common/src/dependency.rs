//! The kernel side's dependency cache key and the chain key: what makes two
//! occurrences of a dependency the same, so that each is sent once.

/// Key of the kernel-side dependency cache (map `DEPENDENCIES`): a dependency
/// is sent to the collector once per process, so a steady workload costs no
/// ring-buffer traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DependencyKey {
    /// The chain key of the other locks held with `from`
    /// ([`chain_key_without`]): the same pair taken under another set of
    /// locks is sent again, so that a cycle is judged guarded (by a common
    /// gate lock) only if every occurrence of each edge was.
    pub chain_key: u64,
    pub pid: u32,
    /// `from` kind | `to` kind << 8 | event << 16: a read->read dependency
    /// does not hide a later read->write one of the same pair.
    pub kinds: u32,
    pub from: u64,
    pub to: u64,
}

impl DependencyKey {
    /// The key of `from -> to` (lock addresses and [`LockKind`]s as `u32`)
    /// for `event` (an [`EventKind`] as `u32`), in process `pid`, under the
    /// held locks of chain key `chain_key`. The kernel side inserts these and the
    /// collector removes them: both build them here.
    ///
    /// [`LockKind`]: crate::LockKind
    /// [`EventKind`]: crate::EventKind
    #[inline(always)]
    pub fn new(pid: u32, event: u32, from: (u64, u32), to: (u64, u32), chain_key: u64) -> Self {
        DependencyKey {
            chain_key,
            pid,
            kinds: (from.1 & 0xff) | (to.1 & 0xff) << 8 | event << 16,
            from: from.0,
            to: to.0,
        }
    }
}

#[cfg(not(target_arch = "bpf"))]
impl DependencyKey {
    /// [`DependencyKey::new`] for a dependency the collector got, sent as a
    /// wake-up hand-off or not.
    pub fn of_dependency(
        pid: u32,
        handoff: bool,
        from: (u64, u32),
        to: (u64, u32),
        chain_key: u64,
    ) -> Self {
        let event = if handoff {
            crate::EventKind::Handoff
        } else {
            crate::EventKind::Dependency
        };
        DependencyKey::new(pid, event as u32, from, to, chain_key)
    }
}

/// The chain key of all the locks `held` (the kernel side folds the same
/// over its held stack).
#[cfg(not(target_arch = "bpf"))]
pub fn chain_key_of(held: &[u64]) -> u64 {
    held.iter().fold(0, |key, &addr| key ^ chain_key_mix(addr))
}

/// One held lock's share of a chain key (lockdep's fingerprint of the locks
/// a thread holds; here of lock instances, by address).
#[inline(always)]
pub fn chain_key_mix(addr: u64) -> u64 {
    addr.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
}

/// The chain key of the held locks other than `from`: the XOR of
/// [`chain_key_mix`] over all held locks (`all`), with `from`'s share taken
/// out.
#[inline(always)]
pub fn chain_key_without(all: u64, from: u64) -> u64 {
    all ^ chain_key_mix(from)
}

#[cfg(feature = "user")]
// SAFETY: plain `#[repr(C)]` data, valid for any bit pattern.
unsafe impl aya::Pod for DependencyKey {}
