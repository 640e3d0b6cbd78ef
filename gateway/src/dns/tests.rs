//! Unit tests of the dns module, one file per submodule.

mod cache;
mod host;
mod resolver;
mod ssrf;
mod fuzz;
