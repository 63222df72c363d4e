//! The graph's storage: vertices and edges in slabs, addressed by index,
//! with each vertex's edges both ways in small vectors. A vertex key is
//! hashed once per insert; walks of the graph follow indices.

use std::cell::Cell;
use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

use crate::model::Dependency;
use crate::slab::Slab;

pub type NodeId = u32;
type EdgeId = u32;

pub(super) struct Node<K> {
    pub(super) key: K,
    /// Its edges: the outgoing ones, (target, edge), then the incoming
    /// ones, (source, edge), each part in insertion order (removals swap).
    /// One list for both: one allocation, and 24 bytes less per vertex.
    edges: Vec<(NodeId, EdgeId)>,
    /// How many of `edges` are outgoing.
    n_out: u32,
    /// The vertex's place in the topological order; meaningful on the
    /// representative of its block (see `order.rs`).
    pub(super) ord: i64,
    /// The representative of the vertex's block.
    pub(super) rep: NodeId,
    /// The next vertex of its block (a circular list).
    pub(super) next: NodeId,
    /// Its index in its process's list of vertices.
    pid_slot: u32,
    /// Stamps of the order's searches (forward, backward) that visited it.
    pub(super) seen: [Cell<u32>; 2],
}

impl<K> Node<K> {
    pub(super) fn out(&self) -> &[(NodeId, EdgeId)] {
        &self.edges[..self.n_out as usize]
    }

    pub(super) fn inc(&self) -> &[(NodeId, EdgeId)] {
        &self.edges[self.n_out as usize..]
    }

    fn push_out(&mut self, item: (NodeId, EdgeId)) {
        grow_small(&mut self.edges);
        self.edges.insert(self.n_out as usize, item);
        self.n_out += 1;
    }

    fn push_inc(&mut self, item: (NodeId, EdgeId)) {
        grow_small(&mut self.edges);
        self.edges.push(item);
    }

    /// Removes the outgoing edge `e`, the last outgoing one taking its
    /// place (as `Vec::swap_remove` would in a list of its own).
    fn remove_out(&mut self, e: EdgeId) {
        let at = self.out().iter().position(|&(_, f)| f == e);
        let at = at.expect("edge both ways");
        let last = self.n_out as usize - 1;
        self.edges.swap(at, last);
        self.edges.remove(last);
        self.n_out -= 1;
    }

    /// Removes the incoming edge `e`, the last incoming one taking its place.
    fn remove_inc(&mut self, e: EdgeId) {
        let at = self.inc().iter().position(|&(_, f)| f == e);
        let at = at.expect("edge both ways");
        self.edges.swap_remove(self.n_out as usize + at);
    }
}

pub struct Store<K> {
    /// Vertex ids by their key's hash: the key is kept once, in its vertex
    /// (a map would keep a second copy of it per vertex).
    index: HashTable<NodeId>,
    hasher: foldhash::fast::RandomState,
    nodes: Slab<Node<K>>,
    edges: Slab<Dependency>,
    /// The ends of the order: a new source goes before `low`, a new target
    /// after `high`.
    pub(super) low: i64,
    pub(super) high: i64,
    /// The stamp of the order's current search.
    pub(super) epoch: u32,
}

impl<K> Default for Store<K> {
    fn default() -> Self {
        Store {
            index: HashTable::new(),
            hasher: Default::default(),
            nodes: Slab::default(),
            edges: Slab::default(),
            low: 0,
            high: 0,
            epoch: 0,
        }
    }
}

impl<K: Copy + Eq + Hash> Store<K> {
    pub fn id(&self, key: &K) -> Option<NodeId> {
        let hash = self.hasher.hash_one(key);
        self.index
            .find(hash, |&n| self.node(n).key == *key)
            .copied()
    }

    pub fn node_count(&self) -> usize {
        self.index.len()
    }

    pub fn edge_count(&self) -> usize {
        self.edges.live
    }

    pub(super) fn node(&self, n: NodeId) -> &Node<K> {
        self.nodes.get(n).expect("live vertex")
    }

    pub(super) fn node_mut(&mut self, n: NodeId) -> &mut Node<K> {
        self.nodes.get_mut(n).expect("live vertex")
    }

    /// Every live vertex, with its id.
    pub(super) fn all_nodes(&self) -> impl Iterator<Item = (NodeId, &Node<K>)> {
        (0..self.nodes.slots as NodeId).filter_map(|n| Some((n, self.nodes.get(n)?)))
    }

    pub fn key(&self, n: NodeId) -> &K {
        &self.node(n).key
    }

    pub fn pid_slot(&self, n: NodeId) -> u32 {
        self.node(n).pid_slot
    }

    pub fn set_pid_slot(&mut self, n: NodeId, slot: u32) {
        self.node_mut(n).pid_slot = slot;
    }

    pub(super) fn clear_stamps(&self) {
        for &n in self.index.iter() {
            self.node(n).seen.iter().for_each(|s| s.set(0));
        }
    }

    /// Adds a vertex with no edges, first in the order if it is to be a
    /// `source`, last otherwise.
    pub fn add_node(&mut self, key: K, source: bool) -> NodeId {
        let ord = if source {
            self.low -= 1;
            self.low
        } else {
            self.high += 1;
            self.high
        };
        let n = self.nodes.insert(Node {
            key,
            edges: Vec::new(),
            n_out: 0,
            ord,
            rep: 0,
            next: 0,
            pid_slot: 0,
            seen: Default::default(),
        });
        let node = self.node_mut(n);
        (node.rep, node.next) = (n, n);
        let (nodes, hasher) = (&self.nodes, &self.hasher);
        let rehash = |&m: &NodeId| hasher.hash_one(nodes.get(m).expect("live vertex").key);
        self.index.insert_unique(hasher.hash_one(key), n, rehash);
        n
    }

    /// The edge `a -> b`, if any: looked up in the shorter of `a`'s
    /// outgoing and `b`'s incoming lists.
    pub fn edge(&self, a: NodeId, b: NodeId) -> Option<EdgeId> {
        let (from, to) = (self.node(a), self.node(b));
        if from.out().len() <= to.inc().len() {
            from.out().iter().find(|&&(w, _)| w == b).map(|&(_, e)| e)
        } else {
            to.inc().iter().find(|&&(w, _)| w == a).map(|&(_, e)| e)
        }
    }

    pub fn dependency(&self, e: EdgeId) -> &Dependency {
        self.edges.get(e).expect("live edge")
    }

    pub fn dependency_mut(&mut self, e: EdgeId) -> &mut Dependency {
        self.edges.get_mut(e).expect("live edge")
    }

    pub fn add_edge(&mut self, a: NodeId, b: NodeId, dep: Dependency) {
        let e = self.edges.insert(dep);
        self.node_mut(a).push_out((b, e));
        self.node_mut(b).push_inc((a, e));
    }

    pub fn successors(&self, n: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.node(n).out().iter().map(|&(w, _)| w)
    }

    pub fn predecessors(&self, n: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.node(n).inc().iter().map(|&(w, _)| w)
    }

    fn take_edge(&mut self, e: EdgeId) -> Dependency {
        self.edges.take(e).expect("live edge")
    }

    /// Removes a vertex and returns the dependencies of its edges
    /// (outgoing, then incoming).
    pub fn remove_node(&mut self, n: NodeId) -> Vec<Dependency> {
        self.leave_block(n);
        let node = self.nodes.take(n).expect("live vertex");
        let hash = self.hasher.hash_one(node.key);
        if let Ok(entry) = self.index.find_entry(hash, |&m| m == n) {
            entry.remove();
        }
        let mut removed = Vec::with_capacity(node.edges.len());
        for &(w, e) in node.out() {
            if w != n {
                self.node_mut(w).remove_inc(e);
            }
            removed.push(self.take_edge(e));
        }
        for &(w, e) in node.inc() {
            if w == n {
                continue; // a self-edge, taken with the outgoing ones
            }
            self.node_mut(w).remove_out(e);
            removed.push(self.take_edge(e));
        }
        removed
    }
}

/// Most locks have one or two dependencies each way: a list grows one
/// entry at a time up to four (a `Vec` would make room for four at once).
fn grow_small<T>(list: &mut Vec<T>) {
    if list.len() == list.capacity() && list.capacity() < 4 {
        list.reserve_exact(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both parts of a vertex's one edge list keep the order two lists of
    /// their own would (pushes at the end, removals swapping the last in),
    /// which the cycle enumeration's order, and so the findings, rest on.
    #[test]
    fn a_vertex_lists_its_edges_as_two_lists_would() {
        const N: u32 = 12;
        let mut store: Store<u32> = Store::default();
        let mut ids: Vec<Option<NodeId>> = vec![None; N as usize];
        // The model: per key, (target key, source key) lists.
        let mut out: Vec<Vec<(u32, u32)>> = vec![Vec::new(); N as usize];
        let mut inc: Vec<Vec<(u32, u32)>> = vec![Vec::new(); N as usize];
        let mut x = 11u64;
        let key_of = |store: &Store<u32>, n: NodeId| *store.key(n);
        for _ in 0..5_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (a, b) = (((x >> 33) % N as u64) as u32, ((x >> 45) % N as u64) as u32);
            if (x >> 20).is_multiple_of(8) {
                let Some(n) = ids[a as usize].take() else {
                    continue;
                };
                store.remove_node(n);
                for (k, list) in out.iter_mut().enumerate() {
                    if let Some(at) = list.iter().position(|&(t, _)| t == a) {
                        if k as u32 != a {
                            list.swap_remove(at);
                        }
                    }
                }
                for (k, list) in inc.iter_mut().enumerate() {
                    if let Some(at) = list.iter().position(|&(s, _)| s == a) {
                        if k as u32 != a {
                            list.swap_remove(at);
                        }
                    }
                }
                out[a as usize].clear();
                inc[a as usize].clear();
                continue;
            }
            let na = *ids[a as usize].get_or_insert_with(|| store.add_node(a, true));
            let nb = *ids[b as usize].get_or_insert_with(|| store.add_node(b, false));
            if store.edge(na, nb).is_some() {
                continue;
            }
            store.add_edge(na, nb, crate::graph::tests::dep(a as u64, b as u64));
            out[a as usize].push((b, 0));
            inc[b as usize].push((a, 0));
            for (k, id) in ids.iter().enumerate() {
                let Some(n) = *id else { continue };
                let node = store.node(n);
                let targets: Vec<u32> =
                    node.out().iter().map(|&(w, _)| key_of(&store, w)).collect();
                let sources: Vec<u32> =
                    node.inc().iter().map(|&(w, _)| key_of(&store, w)).collect();
                let want_out: Vec<u32> = out[k].iter().map(|&(t, _)| t).collect();
                let want_inc: Vec<u32> = inc[k].iter().map(|&(s, _)| s).collect();
                assert_eq!((targets, sources), (want_out, want_inc), "vertex {k}");
            }
        }
        assert_eq!(store.edge_count(), out.iter().map(Vec::len).sum::<usize>());
    }
}
