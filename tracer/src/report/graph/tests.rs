use super::*;

fn dep(from: usize, to: usize, seen: u64) -> GraphDependency {
    GraphDependency {
        from,
        to,
        seen,
        pid: 7,
        thread: "worker".into(),
    }
}

/// a -> b -> c -> a, and d -> a off the cycle.
fn three_cycle() -> LockGraph {
    LockGraph {
        classes: ["a", "b", "c", "d"].map(String::from).to_vec(),
        dependencies: vec![dep(0, 1, 2), dep(1, 2, 1), dep(2, 0, 1), dep(3, 0, 5)],
        omitted_dependencies: 0,
    }
}

#[test]
fn cycles_are_the_components_of_more_than_one_class() {
    assert_eq!(three_cycle().cycles(), [vec![0, 1, 2]]);
}

#[test]
fn the_dot_marks_the_cycle_red_and_not_the_rest() {
    let mut out = Vec::new();
    write_dot(&mut out, &three_cycle()).unwrap();
    let dot = String::from_utf8(out).unwrap();
    assert!(dot.contains("c0 -> c1 [label=\"seen 2x, e.g. thread worker [7]\""));
    for edge in ["c0 -> c1", "c1 -> c2", "c2 -> c0"] {
        let line = dot.lines().find(|l| l.contains(edge)).unwrap();
        assert!(line.contains("color=red"), "{line}");
    }
    let off = dot.lines().find(|l| l.contains("c3 -> c0")).unwrap();
    assert!(!off.contains("color=red"), "{off}");
    assert!(dot.contains("4 classes, 4 dependencies, 1 cycle"));
}

#[test]
fn captures_merge_by_class_name_adding_occurrences() {
    let other = LockGraph {
        classes: ["c", "a"].map(String::from).to_vec(),
        dependencies: vec![dep(1, 0, 3), dep(0, 1, 1)],
        omitted_dependencies: 2,
    };
    let g = LockGraph::merge([&three_cycle(), &other]);
    assert_eq!(g.classes, ["a", "b", "c", "d"]);
    let seen: Vec<(usize, usize, u64)> = g
        .dependencies
        .iter()
        .map(|d| (d.from, d.to, d.seen))
        .collect();
    assert_eq!(
        seen,
        [(0, 1, 2), (1, 2, 1), (2, 0, 2), (3, 0, 5), (0, 2, 3)]
    );
    assert_eq!(g.omitted_dependencies, 2);
}

#[test]
fn a_big_graph_draws_only_its_cycles() {
    let mut g = three_cycle();
    // A long chain beside the cycle.
    for i in 0..MAX_DRAWN {
        g.classes.push(format!("chain{i}"));
        let n = g.classes.len() - 1;
        g.dependencies.push(dep(n - 1, n, 1));
    }
    let mut out = Vec::new();
    write_dot(&mut out, &g).unwrap();
    let dot = String::from_utf8(out).unwrap();
    assert!(dot.contains("c2 -> c0"));
    assert!(!dot.contains("chain0"));
    assert!(dot.contains(&format!(
        "{} classes and {} dependencies not on any cycle are left out",
        MAX_DRAWN + 1,
        MAX_DRAWN + 1
    )));
}

#[test]
fn a_damaged_index_is_skipped_not_a_panic() {
    let mut g = three_cycle();
    g.dependencies.push(dep(0, 99, 1));
    assert_eq!(LockGraph::merge([&g]).dependencies.len(), 4);
}

#[test]
fn names_from_processes_are_escaped() {
    let g = LockGraph {
        classes: vec!["a\u{1b}[2J".into(), "b\"\n".into()],
        dependencies: vec![dep(0, 1, 1), dep(1, 0, 1)],
        omitted_dependencies: 0,
    };
    let mut out = Vec::new();
    write_dot(&mut out, &g).unwrap();
    let dot = String::from_utf8(out).unwrap();
    assert!(!dot.contains('\u{1b}'), "{dot}");
    assert!(!text(&g).contains('\u{1b}'));
}
