"""The process: the twistd plugin's options (`tap`), the `filterproxy` command (`cli`), the
service that owns listeners, clusters and the config in force (`service`), workers, the
admin listener and systemd notifications."""
