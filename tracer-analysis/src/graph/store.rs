//! The graph's storage: vertices and edges in slabs, addressed by index,
//! with each vertex's edges both ways in small vectors. A vertex key is
//! hashed once per insert; walks of the graph follow indices.

use std::hash::Hash;

use crate::model::Dependency;
use crate::FastMap;

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
}

pub struct Store<K> {
    index: FastMap<K, NodeId>,
    pub(super) nodes: Vec<Option<Node<K>>>,
    free_nodes: Vec<NodeId>,
    edges: Vec<Option<Dependency>>,
    free_edges: Vec<EdgeId>,
    edge_count: usize,
    /// The ends of the order: a new source goes before `low`, a new target
    /// after `high`.
    pub(super) low: i64,
    pub(super) high: i64,
    /// Visit stamps of the order's searches, by vertex.
    pub(super) forward_seen: Vec<u32>,
    pub(super) backward_seen: Vec<u32>,
    pub(super) epoch: u32,
}

impl<K> Default for Store<K> {
    fn default() -> Self {
        Store {
            index: FastMap::default(),
            nodes: Vec::new(),
            free_nodes: Vec::new(),
            edges: Vec::new(),
            free_edges: Vec::new(),
            edge_count: 0,
            low: 0,
            high: 0,
            forward_seen: Vec::new(),
            backward_seen: Vec::new(),
            epoch: 0,
        }
    }
}

impl<K: Copy + Eq + Hash> Store<K> {
    pub fn id(&self, key: &K) -> Option<NodeId> {
        self.index.get(key).copied()
    }

    pub fn node_count(&self) -> usize {
        self.index.len()
    }

    pub fn edge_count(&self) -> usize {
        self.edge_count
    }

    pub(super) fn node(&self, n: NodeId) -> &Node<K> {
        self.nodes[n as usize].as_ref().expect("live vertex")
    }

    pub(super) fn node_mut(&mut self, n: NodeId) -> &mut Node<K> {
        self.nodes[n as usize].as_mut().expect("live vertex")
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
        let n = match self.free_nodes.pop() {
            Some(n) => n,
            None => {
                self.nodes.push(None);
                self.forward_seen.push(0);
                self.backward_seen.push(0);
                (self.nodes.len() - 1) as NodeId
            }
        };
        self.nodes[n as usize] = Some(Node {
            key,
            out: Vec::new(),
            inc: Vec::new(),
            ord,
            rep: n,
            next: n,
            pid_slot: 0,
        });
        self.index.insert(key, n);
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
        self.edges[e as usize].as_ref().expect("live edge")
    }

    pub fn dependency_mut(&mut self, e: EdgeId) -> &mut Dependency {
        self.edges[e as usize].as_mut().expect("live edge")
    }

    pub fn add_edge(&mut self, a: NodeId, b: NodeId, dep: Dependency) {
        let e = match self.free_edges.pop() {
            Some(e) => {
                self.edges[e as usize] = Some(dep);
                e
            }
            None => {
                self.edges.push(Some(dep));
                (self.edges.len() - 1) as EdgeId
            }
        };
        self.edge_count += 1;
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
        self.edge_count -= 1;
        self.free_edges.push(e);
        self.edges[e as usize].take().expect("live edge")
    }

    /// Removes a vertex and returns the dependencies of its edges
    /// (outgoing, then incoming).
    pub fn remove_node(&mut self, n: NodeId) -> Vec<Dependency> {
        self.leave_block(n);
        let node = self.nodes[n as usize].take().expect("live vertex");
        self.index.remove(&node.key);
        self.free_nodes.push(n);
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
