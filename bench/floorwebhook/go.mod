module kenv.dev/bench/floorwebhook

go 1.22
