"""Checks, atomic file writes, progress and threads per core: what every layer of the
package uses."""
