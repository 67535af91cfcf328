// Command lap is lap's command line: log in to a lapd, manage agents and
// sessions, and chat with an agent (`lap <agent>`). See `lap --help`.
package main

import (
	"os"
	"os/signal"

	"lap.dev/lap/cli"
)

func main() {
	// Ctrl-C is routed by the CLI: it aborts a running chat turn instead of
	// killing the process.
	interrupts := make(chan os.Signal, 1)
	signal.Notify(interrupts, os.Interrupt)
	os.Exit(cli.Main(os.Args[1:], cli.Env{
		Stdin:      os.Stdin,
		Stdout:     os.Stdout,
		Stderr:     os.Stderr,
		Getenv:     os.Getenv,
		Interrupts: interrupts,
	}))
}
