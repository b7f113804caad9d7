using System.Globalization;

namespace SEmigrate.Activities;

/// <summary>Key epochs handed out from one file, each written down before it is used, so that a
/// restarted worker or a second attempt never seals under an epoch (so a nonce) already used. Epochs
/// count up from <paramref name="first"/>.</summary>
public sealed class EpochFile(string path, uint first = 1)
{
    private static readonly Lock Gate = new();

    public uint Next()
    {
        lock (Gate)
        {
            var next = File.Exists(path) ? uint.Parse(File.ReadAllText(path), CultureInfo.InvariantCulture) + 1 : first;
            File.WriteAllText(path + ".tmp", next.ToString(CultureInfo.InvariantCulture));
            File.Move(path + ".tmp", path, overwrite: true);
            return next;
        }
    }
}
