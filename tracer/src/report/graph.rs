//! The whole lock-order graph (`locktrace report --graph`): every lock
//! class and dependency a run saw, its cycles highlighted. `run`, `watch`
//! and the agent write it in JSON captures as one `lock_graph` line before
//! the summary; `report --graph` merges those of its captures by class
//! name and prints them as text, JSON, DOT or HTML.
//!
//! A busy host's graph has thousands of classes, which no picture shows:
//! past [`MAX_DRAWN`] classes only those on a cycle (strongly connected
//! components of more than one class, found with petgraph) are drawn, and
//! what is left out is counted.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{self, Write};

use petgraph::graph::{DiGraph, NodeIndex};
use serde::{Deserialize, Serialize};
use tracer_analysis::detector::ClassGraph;

use crate::report::dot;
use crate::report::escape;
use crate::report::text::plural;

/// Dependencies a capture's `lock_graph` line lists at most (the most seen
/// first); the rest are counted in `omitted_dependencies`.
pub const MAX_WRITTEN: usize = 100_000;
/// Classes drawn at most; past it, only the classes on cycles.
pub const MAX_DRAWN: usize = 150;

/// A capture's `lock_graph` line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "lock_graph")]
pub struct LockGraph {
    /// Lock classes by display name (the names findings use).
    pub classes: Vec<String>,
    pub dependencies: Vec<GraphDependency>,
    /// Dependencies past [`MAX_WRITTEN`], not listed.
    #[serde(default)]
    pub omitted_dependencies: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphDependency {
    /// Indexes into `classes`.
    pub from: usize,
    pub to: usize,
    /// Distinct occurrences seen (per process and set of held locks).
    pub seen: u64,
    /// The process and thread of one occurrence.
    pub pid: u32,
    pub thread: String,
}

impl From<ClassGraph> for LockGraph {
    fn from(g: ClassGraph) -> Self {
        LockGraph {
            classes: g.classes,
            dependencies: (g.dependencies.into_iter())
                .map(|d| GraphDependency {
                    from: d.from,
                    to: d.to,
                    seen: d.seen,
                    pid: d.pid,
                    thread: d.thread,
                })
                .collect(),
            omitted_dependencies: g.omitted_dependencies,
        }
    }
}

impl LockGraph {
    /// One graph of several (captures of one host, or of a fleet), classes
    /// matched by name, occurrences added up.
    pub fn merge<'a>(graphs: impl IntoIterator<Item = &'a LockGraph>) -> LockGraph {
        let mut merged = LockGraph::default();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut edges: BTreeMap<(usize, usize), usize> = BTreeMap::new();
        for g in graphs {
            merged.omitted_dependencies += g.omitted_dependencies;
            for d in &g.dependencies {
                let (Some(from), Some(to)) = (g.classes.get(d.from), g.classes.get(d.to)) else {
                    continue; // a damaged line: its index is not a class
                };
                let mut id = |name: &String| {
                    *index.entry(name.clone()).or_insert_with(|| {
                        merged.classes.push(name.clone());
                        merged.classes.len() - 1
                    })
                };
                let key = (id(from), id(to));
                match edges.get(&key) {
                    Some(&i) => merged.dependencies[i].seen += d.seen,
                    None => {
                        edges.insert(key, merged.dependencies.len());
                        merged.dependencies.push(GraphDependency {
                            from: key.0,
                            to: key.1,
                            ..d.clone()
                        });
                    }
                }
            }
        }
        merged
    }

    /// The classes on a cycle, by strongly connected component (each of
    /// more than one class), largest first.
    pub fn cycles(&self) -> Vec<Vec<usize>> {
        let mut g: DiGraph<usize, ()> = DiGraph::new();
        let nodes: Vec<NodeIndex> = (0..self.classes.len()).map(|i| g.add_node(i)).collect();
        for d in &self.dependencies {
            if d.from != d.to {
                g.add_edge(nodes[d.from], nodes[d.to], ());
            }
        }
        let mut sccs: Vec<Vec<usize>> = petgraph::algo::tarjan_scc(&g)
            .into_iter()
            .filter(|c| c.len() > 1)
            .map(|c| {
                let mut v: Vec<usize> = c.into_iter().map(|n| g[n]).collect();
                v.sort_unstable();
                v
            })
            .collect();
        sccs.sort_by_key(|c| std::cmp::Reverse(c.len()));
        sccs
    }
}

/// What a picture shows: the classes drawn, and which of them are on a
/// cycle (their component's number).
struct View {
    /// The number of cycles (components of more than one class).
    cycles: usize,
    drawn: Vec<usize>,
    component: HashMap<usize, usize>,
    left_out_classes: usize,
    left_out_dependencies: usize,
}

fn view(g: &LockGraph) -> View {
    let cycles = g.cycles();
    let component: HashMap<usize, usize> = (cycles.iter().enumerate())
        .flat_map(|(i, c)| c.iter().map(move |&n| (n, i)))
        .collect();
    let mut drawn: Vec<usize> = if g.classes.len() <= MAX_DRAWN {
        (0..g.classes.len()).collect()
    } else {
        cycles.iter().flatten().copied().take(MAX_DRAWN).collect()
    };
    drawn.sort_unstable();
    let mut view = View {
        cycles: cycles.len(),
        left_out_classes: g.classes.len() - drawn.len(),
        left_out_dependencies: 0,
        drawn,
        component,
    };
    view.left_out_dependencies = g.dependencies.iter().filter(|d| !view.shows(d)).count();
    view
}

impl View {
    fn shows(&self, d: &GraphDependency) -> bool {
        self.drawn.binary_search(&d.from).is_ok() && self.drawn.binary_search(&d.to).is_ok()
    }

    /// Whether `d` lies on a cycle: both ends in one component.
    fn on_cycle(&self, d: &GraphDependency) -> bool {
        matches!((self.component.get(&d.from), self.component.get(&d.to)), (Some(a), Some(b)) if a == b)
    }

    fn note(&self) -> Option<String> {
        (self.left_out_classes > 0).then(|| {
            format!(
                "{} classes and {} dependencies not on any cycle are left out (more than {MAX_DRAWN} classes)",
                self.left_out_classes, self.left_out_dependencies
            )
        })
    }
}

/// "lock-order graph: 3 classes, 3 dependencies, 1 cycle" (`cycles` found
/// by the caller: the search is not repeated).
fn headline(g: &LockGraph, cycles: usize) -> String {
    format!(
        "lock-order graph: {}, {}, {}",
        plural(g.classes.len() as u64, "class", "classes"),
        plural(g.dependencies.len() as u64, "dependency", "dependencies"),
        plural(cycles as u64, "cycle", "cycles")
    )
}

/// The graph as one DOT digraph: classes as boxes, dependencies labelled
/// with how often they were seen and by which thread; classes and
/// dependencies on a cycle in red.
pub fn write_dot(out: &mut dyn Write, g: &LockGraph) -> io::Result<()> {
    let v = view(g);
    writeln!(out, "digraph lock_graph {{")?;
    let mut title = headline(g, v.cycles);
    if let Some(note) = v.note() {
        let _ = write!(title, "\\n{note}");
    }
    writeln!(
        out,
        "  label={}; labelloc=t; rankdir=LR; node [shape=box, fontname=\"monospace\"];",
        dot::quote(&title)
    )?;
    for &n in &v.drawn {
        let colour = if v.component.contains_key(&n) {
            ", color=red, fontcolor=red"
        } else {
            ""
        };
        writeln!(
            out,
            "  c{n} [label={}{colour}];",
            dot::quote(&escape::name(&g.classes[n]))
        )?;
    }
    for d in g.dependencies.iter().filter(|d| v.shows(d)) {
        let colour = if v.on_cycle(d) {
            ", color=red, fontcolor=red"
        } else {
            ""
        };
        let width = 1.0 + (d.seen as f64).log2().min(4.0);
        writeln!(
            out,
            "  c{} -> c{} [label={}, penwidth={width:.1}{colour}];",
            d.from,
            d.to,
            dot::quote(&format!(
                "seen {}x, e.g. thread {} [{}]",
                d.seen,
                escape::name(&d.thread),
                d.pid
            ))
        )?;
    }
    writeln!(out, "}}")
}

/// The graph as text: its cycles, each with its dependencies, then a count
/// of the rest.
pub fn text(g: &LockGraph) -> String {
    let mut s = String::new();
    let cycles = g.cycles();
    let _ = writeln!(s, "{}", headline(g, cycles.len()));
    let name = |n: usize| escape::name(&g.classes[n]).into_owned();
    for (i, c) in cycles.iter().enumerate() {
        let _ = writeln!(
            s,
            "cycle {}: {}",
            i + 1,
            plural(c.len() as u64, "class", "classes")
        );
        for d in (g.dependencies.iter())
            .filter(|d| c.binary_search(&d.from).is_ok() && c.binary_search(&d.to).is_ok())
        {
            let _ = writeln!(
                s,
                "  {} -> {}  (seen {}x, e.g. thread {} [{}])",
                name(d.from),
                name(d.to),
                d.seen,
                escape::name(&d.thread),
                d.pid
            );
        }
    }
    if g.omitted_dependencies > 0 {
        let _ = writeln!(
            s,
            "{} dependencies were not written (the capture lists the {MAX_WRITTEN} most seen)",
            g.omitted_dependencies
        );
    }
    s
}

#[cfg(test)]
mod tests;
