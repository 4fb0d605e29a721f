import { randomInt } from 'node:crypto';
import { UsageError } from '../core/errors.js';

/**
 * Account and naming rules Windows Setup enforces. Checking them here turns a Setup that stops
 * at an error dialog (which nobody sees in a headless build) into an input error before booting.
 */

// Characters Windows forbids in user names.
const BAD_USER = /["/\\[\]:;|=,+*?<>@]/;

export function checkAdminUser(name: string): void {
  if (!name || name.length > 20 || BAD_USER.test(name) || /^[\s.]+$/.test(name)) {
    throw new UsageError(
      `input 'admin-user': '${name}' is not a valid Windows user name`,
      'use 1 to 20 characters, none of " / \\ [ ] : ; | = , + * ? < > @',
    );
  }
}

/** '*' lets Windows pick a random name: right for a golden image that is cloned. */
export function checkComputerName(name: string): void {
  if (name === '*') return;
  if (!/^[A-Za-z0-9-]{1,15}$/.test(name) || /^\d+$/.test(name) || name.startsWith('-')) {
    throw new UsageError(
      `input 'computer-name': '${name}' is not a valid Windows computer name`,
      "use 1 to 15 letters, digits or hyphens (not only digits), or '*' for a random name",
    );
  }
}

/** Windows' complexity rule: three of four character classes, at least 8 long, not containing the user name. */
export function passwordComplexityProblem(password: string, user: string): string | undefined {
  if (password.length < 8) return 'it is shorter than 8 characters';
  const classes = [/[a-z]/, /[A-Z]/, /\d/, /[^A-Za-z0-9]/].filter((re) => re.test(password)).length;
  if (classes < 3) return 'it lacks three of: lower case, upper case, digit, symbol';
  if (user.length >= 3 && password.toLowerCase().includes(user.toLowerCase()))
    return 'it contains the user name';
  return undefined;
}

const LOWER = 'abcdefghijkmnopqrstuvwxyz';
const UPPER = 'ABCDEFGHJKLMNPQRSTUVWXYZ';
const DIGIT = '23456789';
// No quotes, percent, caret or ampersand: the password stays safe to paste into cmd, PowerShell and YAML.
const SYMBOL = '-_.+=!#';

/** A random password that meets every Windows policy (20 characters, all four classes). */
export function generatePassword(length = 20): string {
  const all = LOWER + UPPER + DIGIT + SYMBOL;
  const pick = (set: string) => set[randomInt(set.length)]!;
  const chars = [pick(LOWER), pick(UPPER), pick(DIGIT), pick(SYMBOL)];
  while (chars.length < length) chars.push(pick(all));
  for (let i = chars.length - 1; i > 0; i--) {
    const j = randomInt(i + 1);
    [chars[i], chars[j]] = [chars[j]!, chars[i]!];
  }
  return chars.join('');
}

/**
 * The encoding Windows System Image Manager writes for <PlainText>false</PlainText>: base64 of
 * UTF-16LE(password + element name). It is obfuscation, not protection, so the result is as
 * secret as the password (callers mask it too); it keeps the password out of casual view.
 */
export function encodeUnattendPassword(
  password: string,
  element: 'Password' | 'AdministratorPassword',
): string {
  return Buffer.from(password + element, 'utf16le').toString('base64');
}
