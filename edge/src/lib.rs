//! agentos-edge
