package config

// LocalConfig holds the settings of the local sandbox backend (sandboxes/local).
type LocalConfig struct{}

var localSettings = []Setting{}
