//! `agentos up`: a local platform in one command (the full operator experience lands with the
//! CLI issue; this is its first, working slice).

use anyhow::bail;

use crate::args::UpArgs;

pub async fn up(_args: UpArgs) -> anyhow::Result<()> {
    bail!("`agentos up` is not implemented yet")
}
