from watchcache.cli import main

main()
