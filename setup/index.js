'use strict';
require('../action/setup.js');
