//! agentos-workers
