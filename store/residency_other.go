//go:build !linux

package store

// releaseMapping does nothing where madvise is not used.
func (s *Store) releaseMapping() {}
