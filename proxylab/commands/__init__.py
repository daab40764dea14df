"""The CLI's commands, one module per group. ``proxylab.cli`` holds the table that names them."""
