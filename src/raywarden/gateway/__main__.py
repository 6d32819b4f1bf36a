from raywarden.gateway.server import main

main()
