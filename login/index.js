'use strict';
require('../action/login.js');
