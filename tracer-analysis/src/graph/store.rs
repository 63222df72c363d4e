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
    /// (target, edge), in insertion order (removals swap).
    pub(super) out: Vec<(NodeId, EdgeId)>,
    /// (source, edge).
    pub(super) inc: Vec<(NodeId, EdgeId)>,
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
            out: Vec::new(),
            inc: Vec::new(),
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
        if from.out.len() <= to.inc.len() {
            from.out.iter().find(|&&(w, _)| w == b).map(|&(_, e)| e)
        } else {
            to.inc.iter().find(|&&(w, _)| w == a).map(|&(_, e)| e)
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
        push_small(&mut self.node_mut(a).out, (b, e));
        push_small(&mut self.node_mut(b).inc, (a, e));
    }

    pub fn successors(&self, n: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.node(n).out.iter().map(|&(w, _)| w)
    }

    pub fn predecessors(&self, n: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.node(n).inc.iter().map(|&(w, _)| w)
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
        let mut removed = Vec::with_capacity(node.out.len() + node.inc.len());
        for &(w, e) in &node.out {
            if w != n {
                let inc = &mut self.node_mut(w).inc;
                let at = inc
                    .iter()
                    .position(|&(_, f)| f == e)
                    .expect("edge both ways");
                inc.swap_remove(at);
            }
            removed.push(self.take_edge(e));
        }
        for &(w, e) in &node.inc {
            if w == n {
                continue; // a self-edge, taken with the outgoing ones
            }
            let out = &mut self.node_mut(w).out;
            let at = out
                .iter()
                .position(|&(_, f)| f == e)
                .expect("edge both ways");
            out.swap_remove(at);
            removed.push(self.take_edge(e));
        }
        removed
    }
}

/// Most locks have one or two dependencies each way: a list starts with
/// room for one (a `Vec` would make room for four).
fn push_small<T>(list: &mut Vec<T>, item: T) {
    if list.capacity() == 0 {
        list.reserve_exact(1);
    }
    list.push(item);
}
#[cfg(test)]
mod size_probe {
    #[test]
    fn sizes() {
        use crate::model::*;
        eprintln!(
            "node inst {} class {} dep {} optdep {} classkey {} codesite {} lockid {} pyframe {}",
            size_of::<Option<super::Node<super::super::Vertex<LockIdentity>>>>(),
            size_of::<Option<super::Node<super::super::Vertex<ClassId>>>>(),
            size_of::<Dependency>(),
            size_of::<Option<Dependency>>(),
            size_of::<ClassKey>(),
            size_of::<CodeSite>(),
            size_of::<LockIdentity>(),
            size_of::<PyFrame>()
        );
    }
}
