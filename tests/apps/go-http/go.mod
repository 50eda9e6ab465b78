module example.com/hubfly/hello

go 1.23
