namespace SEmigrate.Sealing;

/// <summary>A key file: made 0600 before a byte is in it, on disk before it is used, and whole or not at all
/// (written aside, then moved into place), so a crash never leaves half a key.</summary>
public static class PrivateFile
{
    /// <summary>Writes <paramref name="bytes"/> to <paramref name="path"/>; unless <paramref name="overwrite"/>,
    /// returns false (writing nothing) when another process made the file first.</summary>
    public static bool Write(string path, ReadOnlySpan<byte> bytes, bool overwrite)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        var temporary = $"{path}.{Environment.ProcessId}.tmp";
        var options = new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite };
        using (var file = new FileStream(temporary, options))
        {
            file.Write(bytes);
            file.Flush(flushToDisk: true);
        }
        try
        {
            File.Move(temporary, path, overwrite);
            return true;
        }
        catch (IOException) when (!overwrite && File.Exists(path))
        {
            File.Delete(temporary);
            return false;
        }
    }
}
