//! Unit tests of the dns module, one file per submodule.

mod cache;
mod fuzz;
mod host;
mod resolver;
mod ssrf;
