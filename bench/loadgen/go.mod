module github.com/spiffe-mcp-gateway/bench/loadgen

go 1.22
