//! Nothing here: the comparison is the `compare` bench
//! (`cargo bench -p downpour-compare --bench compare`).
