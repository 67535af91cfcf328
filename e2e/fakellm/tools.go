package fakellm

// Tools are the built-in file and shell tools of a real harness as its
// model calls them: their names and the fields of their input. Scripts
// for either harness call them through Read, Edit and Bash.
type Tools struct {
	read, edit, bash       string
	path, oldText, newText string
}

var (
	// ClaudeCodeTools are those of Claude Code, which the Claude Agent
	// SDK runs.
	ClaudeCodeTools = Tools{"Read", "Edit", "Bash", "file_path", "old_string", "new_string"}
	// OpencodeTools are those of opencode.
	OpencodeTools = Tools{"read", "edit", "bash", "filePath", "oldString", "newString"}
)

// Read reads the file at path (absolute: both harnesses want it so).
func (t Tools) Read(path string) ToolCall { return Call(t.read, map[string]any{t.path: path}) }

// Edit replaces oldText with newText in the file at path.
func (t Tools) Edit(path, oldText, newText string) ToolCall {
	return Call(t.edit, map[string]any{t.path: path, t.oldText: oldText, t.newText: newText})
}

// Bash runs command; description is the title the harness shows.
func (t Tools) Bash(command, description string) ToolCall {
	return Call(t.bash, map[string]any{"command": command, "description": description})
}
