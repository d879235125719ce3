//! Hierarchical feedback: a coordinator that adopted a member whose parent
//! fell silent lets it go when it says it is back under its parent, so the
//! adopter no longer waits on it (nor on its acknowledgements, which now
//! go to the parent).

use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{Incarnation, NodeId, Protocol, Recover, RecoveryContext};
use ft_multicast::{
    Feedback, GroupConfig, GroupId, McastConfig, McastInput, McastMessage, Multicast, Tree,
};

const G: GroupId = GroupId(1);

#[test]
fn an_adopted_member_that_leaves_for_its_parent_is_let_go() {
    // Six members, fanout 2: n0's tree has n1 and n2 under n0, n3 and n4
    // under n1, n5 under n2.
    let tree = Tree {
        fanout: 2,
        ..Tree::default()
    };
    let group = GroupConfig::new(G, (0..6).map(NodeId)).with_feedback(Feedback::Tree(tree));
    let now = Instant::now();
    let ctx = RecoveryContext {
        node: NodeId(0),
        incarnation: Incarnation::FIRST,
        records: Vec::new(),
        seed: 0,
        now,
    };
    let mut source = Multicast::recover(&McastConfig::new(vec![group]), ctx).unwrap();
    source.handle_input(
        now,
        McastInput::Send {
            group: G,
            token: 1,
            payload: Bytes::from_static(b"x"),
        },
    );
    while source.poll_output().is_some() {}
    assert_eq!(
        source.tree_children(G, NodeId(0)),
        vec![NodeId(1), NodeId(2)]
    );
    // n3's parent n1 fell silent: n3 acknowledges to the source, which
    // adopts it.
    let later = now + Duration::from_millis(600);
    source.handle_message(
        later,
        NodeId(3),
        McastMessage::TreeAck {
            group: G,
            origin: NodeId(0),
            life: Incarnation::FIRST,
            upto: 1,
        },
    );
    while source.poll_output().is_some() {}
    assert!(source.tree_children(G, NodeId(0)).contains(&NodeId(3)));
    // n1 is back and waits on n3: n3 says it leaves.
    source.handle_message(
        later,
        NodeId(3),
        McastMessage::TreeLeave {
            group: G,
            origin: NodeId(0),
            life: Incarnation::FIRST,
        },
    );
    while source.poll_output().is_some() {}
    assert_eq!(
        source.tree_children(G, NodeId(0)),
        vec![NodeId(1), NodeId(2)]
    );
    assert_eq!(source.tree_stats().left, 1);
}
