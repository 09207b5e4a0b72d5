//! Input files -> documents (being written).
