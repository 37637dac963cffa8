"""Where a node's copy goes: a file, a tree, or a command's standard input, each written whole and then put in place."""
