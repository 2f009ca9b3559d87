module whoexec.dev/bench/falcohttp

go 1.26
