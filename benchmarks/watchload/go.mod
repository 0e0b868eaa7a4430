module watchcache.local/watchload

go 1.22
