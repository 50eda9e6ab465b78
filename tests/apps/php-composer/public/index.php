<?php

require __DIR__ . '/../vendor/autoload.php';

header('Content-Type: text/plain');
echo (new App\Greeting())->text(), ' ', PHP_MAJOR_VERSION, '.', PHP_MINOR_VERSION, "\n";
