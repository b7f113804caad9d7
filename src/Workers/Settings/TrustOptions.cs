namespace SEmigrate.Workers.Settings;

/// <summary>Who is trusted to say what moves where. <see cref="OperatorKey"/>: the operator's public key
/// (base64, as `semigrate operator init` prints it), which every host pins: it takes only steps of requests
/// that key signed. <see cref="OperatorKeyFile"/>: the operator's private key, where the operator's own
/// commands (migrate, maintenance, host enrol) sign with it. <see cref="ValidHours"/>: how long a signed
/// migration request may start steps (undoing is allowed after).</summary>
public sealed record TrustOptions
{
    public const string Section = "Trust";

    public string? OperatorKey { get; init; }

    public string OperatorKeyFile { get; init; } = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".config", "semigrate", "operator.key");

    public double ValidHours { get; init; } = 12;

    /// <summary>The pinned public key's bytes; null when none is set, or it is not base64.</summary>
    public byte[]? PublicKey
    {
        get
        {
            if (string.IsNullOrWhiteSpace(OperatorKey))
            {
                return null;
            }
            var bytes = new byte[OperatorKey.Length];
            return Convert.TryFromBase64String(OperatorKey.Trim(), bytes, out var n) ? bytes[..n] : null;
        }
    }
}
