//! The lock-order graph: an edge `from -> to` is the first [`Dependency`]
//! observed for that pair. Generic over its nodes: lock objects
//! ([`LockIdentity`]) in the instance graph, [`ClassId`]s in the class graph;
//! the edges keep the instance evidence either way. Cycles are found
//! incrementally, lockdep style: inserting `from -> to` closes a cycle iff
//! `from` is reachable from `to`, and every cycle it closes goes through the
//! new edge, so each cycle is reported exactly once, when its last edge
//! appears.
//!
//! Most inserts cannot close a cycle, and must not pay a search of the
//! graph to learn it: the graph keeps a topological order of its vertices
//! (Pearce and Kelly's dynamic topological sort, see `order.rs`), so an
//! edge that goes forward in that order is known to close nothing at once.
//!
//! Enumeration of the simple cycles through a new edge is bounded (cycle
//! length and cycles per insert, plus a work budget against pathological
//! graphs); inserts whose enumeration was cut are counted in
//! [`LockOrderGraph::truncated_searches`].

mod order;
mod store;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;

use crate::model::{ClassId, Cycle, Dependency, LockIdentity, LockInstance, LockKind};
use crate::FastMap;
use store::{NodeId, Store};

/// What a graph's nodes are.
pub trait GraphNode: Copy + Ord + Hash + Debug {
    /// The process whose exit removes the node, if any.
    fn owner(&self) -> Option<u32>;
}

impl GraphNode for LockIdentity {
    fn owner(&self) -> Option<u32> {
        match self {
            LockIdentity::Private(l) => Some(l.pid),
            // Other processes may map it still.
            LockIdentity::Shared(_) => None,
        }
    }
}

impl GraphNode for ClassId {
    /// Classes outlive processes: an order seen in a dead worker counts.
    fn owner(&self) -> Option<u32> {
        None
    }
}

/// A vertex: a lock in one holding mode. An rwlock held for reading is a
/// vertex of its own (`shared`), so that a path through the graph is a chain
/// of waits that can all block: a read request waits only for the exclusive
/// vertex of the lock it requests, an exclusive request for both. This gives
/// lockdep's rule that readers never block readers (glibc's default rwlocks
/// prefer readers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Vertex<N> {
    node: N,
    shared: bool,
}

impl<N> Vertex<N> {
    fn holding(node: N, kind: LockKind) -> Self {
        Vertex {
            node,
            shared: kind == LockKind::RwlockRead,
        }
    }

    fn exclusive(node: N) -> Self {
        Vertex {
            node,
            shared: false,
        }
    }
}

/// At most this many new cycles are returned by one [`LockOrderGraph::insert`].
pub const MAX_CYCLES_PER_INSERT: usize = 16;
/// Cycles through a new edge beyond its shortest one are enumerated up to
/// this length (in edges, i.e. locks); the shortest one is always found.
pub const MAX_CYCLE_LEN: usize = 16;
/// Vertices the cycle enumeration of one insert may expand before giving up.
const SEARCH_BUDGET: usize = 100_000;

/// Enumeration work allowed per second, over all inserts: a storm of
/// cycles cannot take the collector's time from everything else.
const SEARCH_BUDGET_PER_SECOND: usize = 2_000_000;

/// The enumeration work left in the current second.
struct WorkBudget {
    left: usize,
    since: std::time::Instant,
}

impl WorkBudget {
    fn new() -> Self {
        WorkBudget {
            left: SEARCH_BUDGET_PER_SECOND,
            since: std::time::Instant::now(),
        }
    }

    /// Up to `want` steps (0 when the second's budget is spent).
    fn take(&mut self, want: usize) -> usize {
        if self.since.elapsed() >= std::time::Duration::from_secs(1) {
            self.left = SEARCH_BUDGET_PER_SECOND;
            self.since = std::time::Instant::now();
        }
        let n = want.min(self.left);
        self.left -= n;
        n
    }

    fn give_back(&mut self, unused: usize) {
        self.left += unused;
    }
}

/// Identity of a cycle independent of rotation: its sorted node pairs.
type CycleKey<N> = Vec<(N, N)>;

pub struct LockOrderGraph<N: GraphNode> {
    store: Store<Vertex<N>>,
    /// Vertices of each process, for [`Self::forget_process`].
    by_pid: FastMap<u32, Vec<NodeId>>,
    /// Edges in the graph made by each process (`Dependency::pid`), for
    /// its share of [`crate::limits::DEPENDENCIES`].
    edges_by_pid: FastMap<u32, usize>,
    /// Keys of the cycles reported and still in the graph, and whether they
    /// were reported as guarded (a guarded cycle whose gate disappears is
    /// reported again, as a potential deadlock).
    reported: HashMap<CycleKey<N>, bool>,
    cycles: usize,
    truncated_searches: u64,
    /// Vertices and edges ever added (the graph forgets exited processes).
    locks_seen: u64,
    dependencies_seen: u64,
    /// Cycles of wake-up hand-offs only (not reported), by their nodes.
    handoff_cycles: HashSet<BTreeSet<N>>,
    work: WorkBudget,
}

impl<N: GraphNode> Default for LockOrderGraph<N> {
    fn default() -> Self {
        Self {
            store: Store::default(),
            by_pid: FastMap::default(),
            edges_by_pid: FastMap::default(),
            reported: HashMap::new(),
            cycles: 0,
            truncated_searches: 0,
            locks_seen: 0,
            dependencies_seen: 0,
            handoff_cycles: HashSet::new(),
            work: WorkBudget::new(),
        }
    }
}

impl<N: GraphNode> LockOrderGraph<N> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Distinct cycles made of wake-up hand-offs only, not reported.
    pub fn handoff_cycles(&self) -> u64 {
        self.handoff_cycles.len() as u64
    }

    /// Locks of process `pid` in the graph (by vertex).
    pub fn locks_of(&self, pid: u32) -> usize {
        self.by_pid.get(&pid).map_or(0, |v| v.len())
    }

    /// Dependencies in the graph made by process `pid` (by edge).
    pub fn dependencies_of(&self, pid: u32) -> usize {
        self.edges_by_pid.get(&pid).copied().unwrap_or(0)
    }

    /// Whether `node` is in the graph (in either mode).
    pub fn contains(&self, node: N) -> bool {
        [false, true]
            .into_iter()
            .any(|shared| self.store.id(&Vertex { node, shared }).is_some())
    }

    /// Locks in the graph (an rwlock held in both modes counts twice).
    pub fn lock_count(&self) -> usize {
        self.store.node_count()
    }

    /// Distinct dependencies in the graph (self-edges included; a write
    /// request of an rwlock is an edge to each of its modes).
    pub fn dependency_count(&self) -> usize {
        self.store.edge_count()
    }

    /// Locks ever added, including those of exited processes.
    pub fn locks_seen(&self) -> u64 {
        self.locks_seen
    }

    /// Dependencies ever added, including those of exited processes.
    pub fn dependencies_seen(&self) -> u64 {
        self.dependencies_seen
    }

    /// Cycles reported since the graph was created (not decreased by
    /// [`Self::forget_process`]).
    pub fn cycle_count(&self) -> usize {
        self.cycles
    }

    /// Inserts whose enumeration of further cycles (beyond the shortest,
    /// always reported) was cut by [`MAX_CYCLES_PER_INSERT`],
    /// [`MAX_CYCLE_LEN`] or the work budgets.
    pub fn truncated_searches(&self) -> u64 {
        self.truncated_searches
    }

    /// Every dependency in the graph, once per pair of nodes (an rwlock's
    /// two modes are one node here), in no particular order.
    pub fn dependencies(&self) -> Vec<(N, N, &Dependency)> {
        let mut pairs = HashSet::new();
        let mut out = Vec::new();
        for (_, node) in self.store.all_nodes() {
            for &(target, edge) in node.out() {
                let (from, to) = (node.key.node, self.store.key(target).node);
                if pairs.insert((from, to)) {
                    out.push((from, to, self.store.dependency(edge)));
                }
            }
        }
        out
    }

    /// The dependency kept for `from -> to` (both exclusive), if any.
    pub fn dependency(&self, from: N, to: N) -> Option<&Dependency> {
        let a = self.store.id(&Vertex::exclusive(from))?;
        let b = self.store.id(&Vertex::exclusive(to))?;
        self.store.edge(a, b).map(|e| self.store.dependency(e))
    }

    /// Keeps `dep` as the evidence of every edge `from -> to` (in any
    /// holding mode) instead of the one kept: a class dependency restored
    /// from an earlier run's state, seen again live. Judges nothing.
    pub fn replace_evidence(&mut self, from: N, to: N, dep: &Dependency) {
        for (held, requested) in [(false, false), (false, true), (true, false), (true, true)] {
            let a = self.store.id(&Vertex {
                node: from,
                shared: held,
            });
            let b = self.store.id(&Vertex {
                node: to,
                shared: requested,
            });
            let Some(e) = a.zip(b).and_then(|(a, b)| self.store.edge(a, b)) else {
                continue;
            };
            let kept = self.store.dependency_mut(e);
            let was = kept.pid;
            *kept = dep.clone();
            if was != dep.pid {
                self.uncount_one(was);
                *self.edges_by_pid.entry(dep.pid).or_default() += 1;
            }
        }
    }

    /// Adds `dep` as an edge `from -> to` and returns the cycles it closes
    /// that were not reported before (a cycle is identified by its nodes,
    /// whatever their modes). A dependency already in the graph is a no-op;
    /// a self-edge is recorded but never part of a cycle.
    pub fn insert(&mut self, from: N, to: N, dep: Dependency) -> Vec<Cycle<N>> {
        let held = Vertex::holding(from, dep.from_kind);
        if dep.to_kind != LockKind::RwlockWrite {
            return self.insert_edge(held, Vertex::exclusive(to), dep);
        }
        let mut cycles = self.insert_edge(held, Vertex::exclusive(to), dep.clone());
        let shared = Vertex {
            node: to,
            shared: true,
        };
        cycles.extend(self.insert_edge(held, shared, dep));
        cycles
    }

    /// The node of `v`, added if new. A new vertex is given a place in the
    /// order where it breaks nothing: first when it is the edge's source
    /// (it has no incoming edge yet), last when it is the target.
    fn node(&mut self, v: Vertex<N>, source: bool) -> NodeId {
        if let Some(n) = self.store.id(&v) {
            return n;
        }
        let n = self.store.add_node(v, source);
        if let Some(pid) = v.node.owner() {
            let of_pid = self.by_pid.entry(pid).or_default();
            self.store.set_pid_slot(n, of_pid.len() as u32);
            of_pid.push(n);
        }
        self.locks_seen += 1;
        n
    }

    fn insert_edge(&mut self, from: Vertex<N>, to: Vertex<N>, dep: Dependency) -> Vec<Cycle<N>> {
        let a = self.node(from, true);
        let b = self.node(to, false);
        if let Some(e) = self.store.edge(a, b) {
            let kept = self.store.dependency_mut(e);
            // The same pair under other held locks: its gate locks are those
            // held every time. Keep this occurrence (its stacks) if that
            // shrinks them, and judge its cycles again.
            let always: Vec<LockInstance> = kept
                .gates
                .iter()
                .filter(|g| dep.gates.contains(g))
                .copied()
                .collect();
            // Likewise a hand-off: only if every occurrence was one.
            let handoff = kept.handoff && dep.handoff;
            if always.len() == kept.gates.len() && handoff == kept.handoff {
                return Vec::new();
            }
            let (was, now) = (kept.pid, dep.pid);
            *kept = Dependency {
                gates: always.into(),
                handoff,
                ..dep
            };
            // Another process's occurrence (of a shared lock's edge) holds
            // the edge now: its share counts it.
            if was != now {
                self.uncount_one(was);
                *self.edges_by_pid.entry(now).or_default() += 1;
            }
        } else {
            *self.edges_by_pid.entry(dep.pid).or_default() += 1;
            self.store.add_edge(a, b, dep);
            self.dependencies_seen += 1;
        }
        if a == b {
            return Vec::new();
        }
        // Most edges follow the order (or can be made to, locally): no path
        // `to ~> from` can exist, nothing to search.
        if !self.store.may_reach(b, a) {
            return Vec::new();
        }

        // The shortest cycle through the new edge, whatever its length: a
        // breadth-first search from `to` for `from`, whose cost grows with
        // the graph, not with the length of the cycle.
        let Some(shortest) = self.shortest_path(b, a) else {
            return Vec::new();
        };
        // Further cycles through the edge: enumerated, bounded (length,
        // count, work per insert and per second), the cut counted.
        let mut paths = vec![shortest];
        let budget = self.work.take(SEARCH_BUDGET);
        let truncated = budget == 0 || {
            // Vertices with a path to `from`: the only ones a path
            // `to ~> from` can use.
            let ancestors = self.ancestors(a);
            let mut search = Search {
                store: &self.store,
                ancestors: &ancestors,
                target: a,
                path: vec![b],
                on_path: HashSet::from([b]),
                found: Vec::new(),
                budget,
                truncated: false,
            };
            search.dfs(b);
            self.work.give_back(search.budget);
            for path in search.found {
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
            search.truncated || paths.len() > MAX_CYCLES_PER_INSERT
        };

        let mut cycles = Vec::new();
        for path in paths.into_iter().take(MAX_CYCLES_PER_INSERT) {
            // path = [to, .., from]; the cycle is from -> to -> .. -> from.
            let mut ids = Vec::with_capacity(path.len());
            ids.push(a);
            ids.extend_from_slice(&path[..path.len() - 1]);
            let start = (0..ids.len())
                .min_by_key(|&i| self.store.key(ids[i]))
                .unwrap_or(0);
            ids.rotate_left(start);
            let edges: Vec<Dependency> = (0..ids.len())
                .map(|i| {
                    let (x, y) = (ids[i], ids[(i + 1) % ids.len()]);
                    let e = self.store.edge(x, y).expect("cycle edge is in the graph");
                    self.store.dependency(e).clone()
                })
                .collect();
            let nodes: Vec<N> = ids.iter().map(|&i| self.store.key(i).node).collect();
            // A cycle of wake-up hand-offs only (each thread locked another's
            // mutex while that one waited on a condition with it, as
            // mod_wsgi's workers do) cannot close while those threads wait:
            // not reported unless an edge is seen otherwise (then the cycle
            // is judged again).
            if edges.iter().all(|e| e.handoff) {
                self.handoff_cycles.insert(nodes.iter().copied().collect());
                continue;
            }
            let gate = common_gate(&edges);
            let key = cycle_key(&nodes);
            let guarded = gate.is_some();
            match self.reported.get(&key) {
                // Reported already, as it is now (or unguarded already).
                Some(&was_guarded) if was_guarded == guarded || !was_guarded => {}
                _ => {
                    self.reported.insert(key, guarded);
                    self.cycles += 1;
                    cycles.push(Cycle { nodes, edges, gate });
                }
            }
        }
        if truncated {
            self.truncated_searches += 1;
        }
        cycles
    }

    /// Removes `node` with its dependencies (a lock destroyed or
    /// re-initialized: its address is now another lock). Returns the
    /// removed dependencies.
    pub fn forget_lock(&mut self, node: N) -> Vec<Dependency> {
        let mut removed = Vec::new();
        let mut was_in = false;
        for shared in [false, true] {
            let Some(n) = self.store.id(&Vertex { node, shared }) else {
                continue;
            };
            was_in = true;
            if let Some(pid) = node.owner() {
                self.unlist(pid, n);
            }
            removed.extend(self.store.remove_node(n));
        }
        self.uncount(&removed);
        // A cycle reported is in the graph: only a lock of the graph (most
        // inits and destroys are not) can be in one.
        if was_in {
            self.reported
                .retain(|key, _| key.iter().all(|(a, b)| *a != node && *b != node));
        }
        removed
    }

    /// Removes every lock of process `pid`, with its dependencies (the
    /// process exited; its pid may be reused by an unrelated process).
    /// Returns the removed dependencies.
    pub fn forget_process(&mut self, pid: u32) -> Vec<Dependency> {
        let Some(nodes) = self.by_pid.remove(&pid) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for n in nodes {
            removed.extend(self.store.remove_node(n));
        }
        self.uncount(&removed);
        self.reported.retain(|key, _| {
            key.iter()
                .all(|(a, b)| a.owner() != Some(pid) && b.owner() != Some(pid))
        });
        removed
    }

    /// Removed edges leave their processes' counts.
    fn uncount(&mut self, removed: &[Dependency]) {
        for dep in removed {
            self.uncount_one(dep.pid);
        }
    }

    fn uncount_one(&mut self, pid: u32) {
        if let Some(n) = self.edges_by_pid.get_mut(&pid) {
            *n -= 1;
            if *n == 0 {
                self.edges_by_pid.remove(&pid);
            }
        }
    }

    /// Takes node `n` off its process's list.
    fn unlist(&mut self, pid: u32, n: NodeId) {
        let Some(of_pid) = self.by_pid.get_mut(&pid) else {
            return;
        };
        let slot = self.store.pid_slot(n) as usize;
        of_pid.swap_remove(slot);
        if let Some(&moved) = of_pid.get(slot) {
            self.store.set_pid_slot(moved, slot as u32);
        }
        if of_pid.is_empty() {
            self.by_pid.remove(&pid);
        }
    }

    /// The shortest path `from ~> to` (both included), if any.
    fn shortest_path(&self, from: NodeId, to: NodeId) -> Option<Vec<NodeId>> {
        let mut parent: FastMap<NodeId, NodeId> = FastMap::default();
        let mut queue = VecDeque::from([from]);
        parent.insert(from, from);
        while let Some(v) = queue.pop_front() {
            if v == to {
                let mut path = vec![to];
                let mut at = to;
                while at != from {
                    at = parent[&at];
                    path.push(at);
                }
                path.reverse();
                return Some(path);
            }
            for w in self.store.successors(v) {
                if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(w) {
                    e.insert(v);
                    queue.push_back(w);
                }
            }
        }
        None
    }

    /// All vertices with a path to `v`, `v` included.
    fn ancestors(&self, v: NodeId) -> HashSet<NodeId, foldhash::fast::RandomState> {
        let mut seen = HashSet::default();
        seen.insert(v);
        let mut queue = VecDeque::from([v]);
        while let Some(w) = queue.pop_front() {
            for p in self.store.predecessors(w) {
                if seen.insert(p) {
                    queue.push_back(p);
                }
            }
        }
        seen
    }
}

fn cycle_key<N: GraphNode>(nodes: &[N]) -> CycleKey<N> {
    let mut key: Vec<(N, N)> = (0..nodes.len())
        .map(|i| (nodes[i], nodes[(i + 1) % nodes.len()]))
        .collect();
    key.sort_unstable();
    key
}

/// A lock in the gate set of every edge, if any (the smallest).
fn common_gate(edges: &[Dependency]) -> Option<LockInstance> {
    let (first, rest) = edges.split_first()?;
    first
        .gates
        .iter()
        .find(|g| rest.iter().all(|e| e.gates.contains(g)))
        .copied()
}

/// Enumeration of the simple paths `path[0] ~> target`.
struct Search<'a, K> {
    store: &'a Store<K>,
    ancestors: &'a HashSet<NodeId, foldhash::fast::RandomState>,
    target: NodeId,
    path: Vec<NodeId>,
    on_path: HashSet<NodeId>,
    /// Up to `MAX_CYCLES_PER_INSERT + 1` paths (one more tells "cut").
    found: Vec<Vec<NodeId>>,
    budget: usize,
    truncated: bool,
}

impl<K: Copy + Eq + Hash> Search<'_, K> {
    /// Returns false to stop the whole search.
    fn dfs(&mut self, v: NodeId) -> bool {
        if v == self.target {
            self.found.push(self.path.clone());
            return self.found.len() <= MAX_CYCLES_PER_INSERT;
        }
        // The path has `path.len()` vertices; with the new edge, extending
        // it gives a cycle of at least `path.len() + 1` locks.
        if self.path.len() >= MAX_CYCLE_LEN {
            self.truncated = true;
            return true;
        }
        if self.budget == 0 {
            self.truncated = true;
            return false;
        }
        self.budget -= 1;
        let store = self.store;
        for w in store.successors(v) {
            if !self.ancestors.contains(&w) || self.on_path.contains(&w) {
                continue;
            }
            self.path.push(w);
            self.on_path.insert(w);
            let go_on = self.dfs(w);
            self.on_path.remove(&w);
            self.path.pop();
            if !go_on {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LockKind;

    type Cycle = crate::model::Cycle<LockIdentity>;
    type LockId = LockInstance;

    struct Graph(LockOrderGraph<LockIdentity>);

    impl Graph {
        fn new() -> Self {
            Graph(LockOrderGraph::new())
        }
        fn insert(&mut self, d: Dependency) -> Vec<Cycle> {
            self.0.insert(
                LockIdentity::Private(d.from),
                LockIdentity::Private(d.to),
                d,
            )
        }
        fn dependency(&self, from: LockId, to: LockId) -> Option<&Dependency> {
            self.0
                .dependency(LockIdentity::Private(from), LockIdentity::Private(to))
        }
    }

    impl std::ops::Deref for Graph {
        type Target = LockOrderGraph<LockIdentity>;
        fn deref(&self) -> &Self::Target {
            &self.0
        }
    }

    impl std::ops::DerefMut for Graph {
        fn deref_mut(&mut self) -> &mut Self::Target {
            &mut self.0
        }
    }

    const PID: u32 = 100;

    fn lock(addr: u64) -> LockId {
        LockId { pid: PID, addr }
    }

    fn dep_in(pid: u32, from: u64, to: u64) -> Dependency {
        Dependency {
            from: LockId { pid, addr: from },
            to: LockId { pid, addr: to },
            from_kind: LockKind::Mutex,
            to_kind: LockKind::Mutex,
            pid,
            tid: pid + 1,
            thread: "t".into(),
            timestamp_ns: 0,
            held_stack: vec![0x1000 + from].into(),
            held_python: None,
            stack: vec![0x2000 + to].into(),
            gates: Box::new([]),
            chain_key: 0,
            python: vec![].into(),
            handoff: false,
        }
    }

    pub(super) fn dep(from: u64, to: u64) -> Dependency {
        dep_in(PID, from, to)
    }

    fn rw(from: u64, held: LockKind, to: u64, requested: LockKind) -> Dependency {
        Dependency {
            from_kind: held,
            to_kind: requested,
            ..dep(from, to)
        }
    }

    use LockKind::{RwlockRead as R, RwlockWrite as W};

    fn gated(from: u64, to: u64, gates: &[u64]) -> Dependency {
        Dependency {
            gates: gates.iter().map(|&g| lock(g)).collect(),
            ..dep(from, to)
        }
    }

    fn handoff(from: u64, to: u64) -> Dependency {
        Dependency {
            handoff: true,
            ..dep(from, to)
        }
    }

    #[test]
    fn a_cycle_of_handoffs_is_not_reported_until_an_edge_is_seen_otherwise() {
        let mut g = Graph::new();
        assert!(g.insert(handoff(0xa, 0xb)).is_empty());
        assert!(g.insert(handoff(0xb, 0xa)).is_empty(), "hand-offs only");
        assert_eq!(g.handoff_cycles(), 1);
        // The same edge, once with the other thread not waiting: a real order.
        let cycles = g.insert(dep(0xb, 0xa));
        assert_eq!(cycles.len(), 1);
        assert!(!cycles[0].edges.iter().all(|e| e.handoff));
    }

    #[test]
    fn a_common_gate_lock_guards_a_cycle_until_an_edge_is_seen_without_it() {
        let mut g = Graph::new();
        assert!(g.insert(gated(0xa, 0xb, &[0x9])).is_empty());
        let cycles = g.insert(gated(0xb, 0xa, &[0x9]));
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].gate, Some(lock(0x9)));
        // The same edge again under the gate: nothing new.
        assert!(g.insert(gated(0xb, 0xa, &[0x9, 0x7])).is_empty());
        // B -> A once without the gate: the cycle can deadlock after all.
        let cycles = g.insert(gated(0xb, 0xa, &[]));
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].gate, None);
        assert!(cycles[0].edges.iter().any(|e| e.gates.is_empty()));
        // And it is not reported a third time.
        assert!(g.insert(gated(0xa, 0xb, &[])).is_empty());
    }

    #[test]
    fn different_gates_do_not_guard() {
        let mut g = Graph::new();
        assert!(g.insert(gated(0xa, 0xb, &[0x8])).is_empty());
        let cycles = g.insert(gated(0xb, 0xa, &[0x9]));
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].gate, None);
    }

    #[test]
    fn readers_never_block_readers() {
        let mut g = Graph::new();
        assert!(g.insert(rw(0xa, R, 0xb, R)).is_empty());
        assert!(g.insert(rw(0xb, R, 0xa, R)).is_empty());
        // Held for writing on one side only: each request is a read, which a
        // reader does not block, and the writer's request waits for a reader
        // that waits for nothing.
        assert!(g.insert(rw(0xa, W, 0xb, R)).is_empty());
        assert_eq!(g.cycle_count(), 0);
    }

    #[test]
    fn read_held_write_requested_cycle() {
        let mut g = Graph::new();
        assert!(g.insert(rw(0xa, R, 0xb, W)).is_empty());
        let cycles = g.insert(rw(0xb, R, 0xa, W));
        assert_eq!(cycles.len(), 1);
        check_shape(&cycles[0]);
        assert_eq!(cycles[0].edges[0].from_kind, R);
    }

    #[test]
    fn write_request_waits_for_a_read_holder_and_a_mutex() {
        let mut g = Graph::new();
        // a mutex A held, rwlock B requested for writing; B held for reading,
        // A requested: a deadlock.
        assert!(g.insert(rw(0xa, LockKind::Mutex, 0xb, W)).is_empty());
        assert_eq!(g.insert(rw(0xb, R, 0xa, LockKind::Mutex)).len(), 1);
    }

    fn pairs(c: &Cycle) -> Vec<(u64, u64)> {
        c.edges.iter().map(|d| (d.from.addr, d.to.addr)).collect()
    }

    fn check_shape(c: &Cycle) {
        let n = c.edges.len();
        for i in 0..n {
            assert_eq!(c.edges[i].to, c.edges[(i + 1) % n].from);
        }
        let min = c.locks().into_iter().min().unwrap();
        assert_eq!(c.edges[0].from, min);
    }

    #[test]
    fn ab_ba_reported_once() {
        let mut g = Graph::new();
        assert!(g.insert(dep(0xa, 0xb)).is_empty());
        let cycles = g.insert(dep(0xb, 0xa));
        assert_eq!(cycles.len(), 1);
        check_shape(&cycles[0]);
        assert_eq!(pairs(&cycles[0]), [(0xa, 0xb), (0xb, 0xa)]);
        // Re-inserting either edge is a no-op.
        assert!(g.insert(dep(0xb, 0xa)).is_empty());
        assert!(g.insert(dep(0xa, 0xb)).is_empty());
        assert_eq!(g.cycle_count(), 1);
        assert_eq!(g.lock_count(), 2);
        assert_eq!(g.dependency_count(), 2);
    }

    #[test]
    fn first_dependency_is_kept() {
        let mut g = Graph::new();
        g.insert(dep(0xa, 0xb));
        let mut again = dep(0xa, 0xb);
        again.tid = 999;
        g.insert(again);
        assert_eq!(g.dependency(lock(0xa), lock(0xb)).unwrap().tid, PID + 1);
    }

    #[test]
    fn three_cycle_on_closing_insert() {
        let mut g = Graph::new();
        assert!(g.insert(dep(0xb, 0xc)).is_empty());
        assert!(g.insert(dep(0xc, 0xa)).is_empty());
        let cycles = g.insert(dep(0xa, 0xb));
        assert_eq!(cycles.len(), 1);
        check_shape(&cycles[0]);
        assert_eq!(pairs(&cycles[0]), [(0xa, 0xb), (0xb, 0xc), (0xc, 0xa)]);
        // The edge kept is the one observed, with its own stack.
        assert_eq!(*cycles[0].edges[2].stack, [0x2000 + 0xa]);
        for (f, t) in [(0xa, 0xb), (0xb, 0xc), (0xc, 0xa)] {
            assert!(g.insert(dep(f, t)).is_empty());
        }
        assert_eq!(g.cycle_count(), 1);
    }

    #[test]
    fn rotation_starts_at_smallest_lock() {
        let mut g = Graph::new();
        g.insert(dep(0x30, 0x10));
        g.insert(dep(0x10, 0x20));
        let cycles = g.insert(dep(0x20, 0x30));
        assert_eq!(cycles.len(), 1);
        assert_eq!(
            pairs(&cycles[0]),
            [(0x10, 0x20), (0x20, 0x30), (0x30, 0x10)]
        );
    }

    #[test]
    fn consistent_order_has_no_cycle() {
        let mut g = Graph::new();
        // A total order over 20 locks, every pair in order: a DAG.
        for i in 0..20u64 {
            for j in i + 1..20 {
                assert!(g.insert(dep(i, j)).is_empty());
                assert!(g.insert(dep(i, j)).is_empty());
            }
        }
        assert_eq!(g.dependency_count(), 190);
        assert_eq!(g.lock_count(), 20);
        assert_eq!(g.cycle_count(), 0);
        assert_eq!(g.truncated_searches(), 0);
    }

    #[test]
    fn self_edge_is_no_cycle() {
        let mut g = Graph::new();
        assert!(g.insert(dep(0xa, 0xa)).is_empty());
        assert!(g.insert(dep(0xa, 0xb)).is_empty());
        assert!(g.insert(dep(0xb, 0xb)).is_empty());
        assert_eq!(g.cycle_count(), 0);
        assert_eq!(g.dependency_count(), 3);
    }

    #[test]
    fn two_cycles_sharing_an_edge() {
        let mut g = Graph::new();
        // a -> b shared; b -> a and b -> c -> a close two distinct cycles.
        assert!(g.insert(dep(0xb, 0xa)).is_empty());
        assert!(g.insert(dep(0xb, 0xc)).is_empty());
        assert!(g.insert(dep(0xc, 0xa)).is_empty());
        let mut cycles = g.insert(dep(0xa, 0xb));
        assert_eq!(cycles.len(), 2);
        cycles.sort_by_key(|c| c.len());
        cycles.iter().for_each(check_shape);
        assert_eq!(pairs(&cycles[0]), [(0xa, 0xb), (0xb, 0xa)]);
        assert_eq!(pairs(&cycles[1]), [(0xa, 0xb), (0xb, 0xc), (0xc, 0xa)]);
        assert_eq!(g.cycle_count(), 2);

        // Later cycles through the shared edge are still found, old ones not.
        let cycles = g.insert(dep(0xb, 0xd));
        assert!(cycles.is_empty());
        let cycles = g.insert(dep(0xd, 0xa));
        assert_eq!(cycles.len(), 1);
        assert_eq!(pairs(&cycles[0]), [(0xa, 0xb), (0xb, 0xd), (0xd, 0xa)]);
        assert_eq!(g.cycle_count(), 3);
    }

    #[test]
    fn same_address_in_two_processes() {
        let mut g = Graph::new();
        assert!(g.insert(dep_in(1, 0xa, 0xb)).is_empty());
        assert!(g.insert(dep_in(2, 0xb, 0xa)).is_empty());
        assert_eq!(g.lock_count(), 4);
        assert_eq!(g.cycle_count(), 0);
        // Within one process it is a cycle, with that process's edges only.
        let cycles = g.insert(dep_in(2, 0xa, 0xb));
        assert_eq!(cycles.len(), 1);
        assert!(cycles[0].edges.iter().all(|d| d.pid == 2));
    }

    #[test]
    fn forget_process() {
        let mut g = Graph::new();
        g.insert(dep_in(1, 0xa, 0xb));
        assert_eq!(g.insert(dep_in(1, 0xb, 0xa)).len(), 1);
        g.insert(dep_in(2, 0xa, 0xb));
        g.forget_process(1);
        g.forget_process(3);
        assert_eq!(g.lock_count(), 2);
        assert_eq!(g.dependency_count(), 1);
        // A new process reusing pid 1 gets its own report.
        g.insert(dep_in(1, 0xa, 0xb));
        assert_eq!(g.insert(dep_in(1, 0xb, 0xa)).len(), 1);
        assert_eq!(g.cycle_count(), 2);
    }

    #[test]
    fn cycles_per_insert_bound() {
        let mut g = Graph::new();
        // b -> m_i -> a for 20 middles, then a -> b closes 20 3-cycles.
        for m in 0..20 {
            assert!(g.insert(dep(0xb, 0x100 + m)).is_empty());
            assert!(g.insert(dep(0x100 + m, 0xa)).is_empty());
        }
        let cycles = g.insert(dep(0xa, 0xb));
        assert_eq!(cycles.len(), MAX_CYCLES_PER_INSERT);
        cycles.iter().for_each(check_shape);
        let keys: HashSet<_> = cycles.iter().map(|c| cycle_key(&c.nodes)).collect();
        assert_eq!(keys.len(), MAX_CYCLES_PER_INSERT);
        assert_eq!(g.truncated_searches(), 1);
        assert_eq!(g.cycle_count(), MAX_CYCLES_PER_INSERT);
    }

    #[test]
    fn a_ring_of_any_length_is_found_once() {
        for n in [MAX_CYCLE_LEN as u64 + 1, 25, 50, 100] {
            let mut g = Graph::new();
            for i in 0..n - 1 {
                assert!(g.insert(dep(i, i + 1)).is_empty());
            }
            let cycles = g.insert(dep(n - 1, 0));
            assert_eq!(cycles.len(), 1, "ring of {n}");
            assert_eq!(cycles[0].len(), n as usize);
            check_shape(&cycles[0]);
            // Seen again: nothing new.
            assert!(g.insert(dep(n - 1, 0)).is_empty());
            assert_eq!(g.cycle_count(), 1);
        }
    }

    #[test]
    fn the_shortest_cycle_comes_first_and_longer_ones_are_bounded() {
        // b -> a directly, and b -> c1 -> ... -> c20 -> a: the new edge
        // a -> b closes a 2-cycle and a 22-cycle, longer than enumerated.
        let mut g = Graph::new();
        assert!(g.insert(dep(0xb, 0xa)).is_empty());
        let mut prev = 0xb;
        for c in 0..20 {
            assert!(g.insert(dep(prev, 0x100 + c)).is_empty());
            prev = 0x100 + c;
        }
        assert!(g.insert(dep(prev, 0xa)).is_empty());
        let cycles = g.insert(dep(0xa, 0xb));
        assert_eq!(cycles.len(), 1);
        assert_eq!(pairs(&cycles[0]), [(0xa, 0xb), (0xb, 0xa)]);
        assert_eq!(g.truncated_searches(), 1);
    }

    #[test]
    fn dense_graph_is_bounded() {
        // A complete graph on 40 locks: exponentially many simple cycles.
        let mut g = Graph::new();
        for i in 0..40u64 {
            for j in 0..40u64 {
                if i != j {
                    assert!(g.insert(dep(i, j)).len() <= MAX_CYCLES_PER_INSERT);
                }
            }
        }
        assert!(g.truncated_searches() > 0);
        assert_eq!(g.dependency_count(), 40 * 39);
    }
}
