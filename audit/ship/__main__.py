from blindkey.audit.ship.child import main

main()
