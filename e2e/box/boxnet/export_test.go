package boxnet

// ReleaseForTest gives up n's slot without removing anything, as the
// kernel does when a box's process dies.
func ReleaseForTest(n *Net) {
	n.mu.Lock()
	n.closed = true
	n.mu.Unlock()
	n.unlock()
}
