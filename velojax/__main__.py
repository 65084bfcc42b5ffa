from velojax.demo import main

main()
