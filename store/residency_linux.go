package store

import (
	"unsafe"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// releaseMapping drops the database file's pages from this process's
// mapping of it (MADV_DONTNEED; they stay in the page cache). Opening
// reads every page once — the freelist is rebuilt by a scan, as it is not
// written on commits — which left the whole file resident and counted in
// lapd's memory; afterwards lapd maps back in only the pages it reads.
// The mapping is read-only and bbolt re-reads pages through it, so nothing
// changes but residency. Failure is harmless and ignored.
func (s *Store) releaseMapping() {
	_ = s.db.View(func(tx *bolt.Tx) error {
		info := s.db.Info()
		// Info holds the mapping's address as a uintptr; read it as the
		// pointer it is (the open read transaction keeps the mapping in
		// place).
		base := *(*unsafe.Pointer)(unsafe.Pointer(&info.Data))
		return unix.Madvise(unsafe.Slice((*byte)(base), tx.Size()), unix.MADV_DONTNEED)
	})
}
