//! What every core of this crate checks of the records it is rebuilt from.

use ft_core::{Component, RecoveryContext, RecoveryError};

/// Refuses records of any component but `known`: a core reads its own
/// records ([`RecoveryContext::read`]) and hands embedded cores theirs
/// ([`RecoveryContext::component`]), and both pass over records of other
/// components, so a record of a component this core does not have (another
/// core's log, or one written in a format without the component byte)
/// would otherwise be skipped without a word.
pub(crate) fn only_components(
    ctx: &RecoveryContext,
    known: &[Component],
) -> Result<(), RecoveryError> {
    match ctx.components().into_iter().find(|c| !known.contains(c)) {
        None => Ok(()),
        Some(c) => Err(RecoveryError::Inconsistent(format!(
            "records of {c}, which this core does not have"
        ))),
    }
}
